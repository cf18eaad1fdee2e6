"""InferenceService on the real control plane: revisions, router, HTTPRoute, KServe.

kwok makes the server pods Running and Ready, so Deployments really become available
and the rollout really moves; the servers themselves are exercised as processes in
tests/workloads and the canary analysis against a real Prometheus in test_canary_loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.thirdparty import crd_files
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

GROUP_ARGS = ("modelsmith.io", "v1alpha1")
PLURAL = "inferenceservices"
FAST_CANARY = {
    "steps": [20, 60],
    "maxWeight": 60,
    "interval": "3s",
    "analysisInterval": "1s",
    "metrics": [],
}


def _get(namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP_ARGS, namespace, PLURAL, name
    )
    return obj


def _status(namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = _get(namespace, name).get("status", {}) or {}
    return status


def _create(namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "file:///models/v1"}, "resources": {"cpu": "100m"}} | spec,
    }
    client.CustomObjectsApi().create_namespaced_custom_object(*GROUP_ARGS, namespace, PLURAL, body)


def _patch(namespace: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi().patch_namespaced_custom_object(
        *GROUP_ARGS, namespace, PLURAL, name, patch
    )


def _routes(namespace: str, name: str) -> dict[str, int]:
    """The router's table now ({} before it exists).

    The operator writes status before it pushes the split (a stale reconcile must fail
    on the status write first), so a test that saw a phase waits for the routes too.
    """
    try:
        cm = client.CoreV1Api().read_namespaced_config_map(f"{name}-routes", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    table = json.loads(cm.data["routes.json"])
    return {r["name"]: r["weight"] for r in table["revisions"]}


def _revisions(namespace: str) -> set[str]:
    found = client.AppsV1Api().list_namespaced_deployment(
        namespace, label_selector="app.kubernetes.io/component=server"
    )
    return {d.metadata.name for d in found.items}


def test_router_backend_walks_the_canary_through_its_weights(
    operator: KopfRunner, namespace: str
) -> None:
    _create(namespace, "chat", canary=FAST_CANARY)
    wait_for(lambda: _status(namespace, "chat").get("phase") == "Ready", timeout=60, what="Ready")
    v1 = _status(namespace, "chat")["stableRevision"]
    wait_for(lambda: _routes(namespace, "chat") == {v1: 100}, timeout=10, what="all on v1")
    assert _revisions(namespace) == {v1}
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    router = apps.read_namespaced_deployment("chat-router", namespace)
    assert router.spec.template.spec.containers[0].args[0] == "router"
    assert core.read_namespaced_service("chat", namespace).spec.ports[0].port == 80
    role = client.RbacAuthorizationV1Api().read_namespaced_role("chat-router", namespace)
    assert role.rules[0].resource_names == ["chat-routes"]

    _patch(namespace, "chat", {"spec": {"model": {"uri": "file:///models/v2"}}})
    seen: list[dict[str, int]] = []

    def promoted() -> bool:
        routes = _routes(namespace, "chat")
        if not seen or seen[-1] != routes:
            seen.append(routes)
        return _status(namespace, "chat").get("canary", {}).get("stage") == "Promoted"

    wait_for(promoted, timeout=90, interval=0.2, what="canary promoted")
    v2 = _status(namespace, "chat")["stableRevision"]
    assert v2 != v1
    canary_weights = [r.get(v2, 0) for r in seen]
    assert 20 in canary_weights and 60 in canary_weights, seen
    assert all(sum(r.values()) == 100 and r.get(v2, 0) <= 60 for r in seen[:-1]), seen
    wait_for(lambda: _routes(namespace, "chat") == {v2: 100}, timeout=10, what="all on v2")
    wait_for(lambda: _revisions(namespace) == {v2}, timeout=30, what="v1 removed")
    history = [h["reason"] for h in _status(namespace, "chat")["canary"]["history"]]
    assert history[0] == "CanaryStarted" and history[-1] == "Promoted"

    def reasons() -> set[str]:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=chat")
        return {e.reason for e in events.items}

    # The reconcile that promotes posts its events after it removed v1's Deployment.
    wait_for(
        lambda: {"CanaryStarted", "StepAdvanced", "Promoted"} <= reasons(),
        timeout=10,
        what="the rollout's events",
    )


def test_abort_annotation_rolls_back_and_is_removed(operator: KopfRunner, namespace: str) -> None:
    slow = FAST_CANARY | {"interval": "10m", "analysisInterval": "1m"}
    _create(namespace, "chat", canary=slow, autoscaling={"maxReplicas": 3, "metric": "cpu"})
    wait_for(lambda: _status(namespace, "chat").get("phase") == "Ready", timeout=60, what="Ready")
    v1 = _status(namespace, "chat")["stableRevision"]
    wait_for(lambda: _routes(namespace, "chat") == {v1: 100}, timeout=10, what="all on v1")
    hpa = client.AutoscalingV2Api().read_namespaced_horizontal_pod_autoscaler(v1, namespace)
    assert hpa.spec.scale_target_ref.name == v1 and hpa.spec.max_replicas == 3
    _patch(namespace, "chat", {"spec": {"model": {"uri": "file:///models/v2"}}})
    wait_for(
        lambda: _status(namespace, "chat").get("canaryWeight") == 20, timeout=60, what="canary 20%"
    )
    v2 = _status(namespace, "chat")["canaryRevision"]
    annotation = {"modelsmith.io/canary-decision": "Abort"}
    _patch(namespace, "chat", {"metadata": {"annotations": annotation}})
    wait_for(
        lambda: _status(namespace, "chat").get("phase") == "Degraded",
        timeout=30,
        what="rolled back",
    )
    status = _status(namespace, "chat")
    wait_for(lambda: _routes(namespace, "chat") == {v1: 100}, timeout=10, what="all back on v1")
    rolled = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert rolled["status"] == "True" and "Abort" in rolled["message"]
    canary = client.AppsV1Api().read_namespaced_deployment(v2, namespace)
    assert canary.spec.replicas == 0, "a rolled-back canary is scaled down"
    hpas = client.AutoscalingV2Api().list_namespaced_horizontal_pod_autoscaler(namespace).items
    assert [h.metadata.name for h in hpas] == [v1], "no autoscaler brings the canary back"

    def annotation_removed() -> bool:
        annotations = _get(namespace, "chat")["metadata"].get("annotations") or {}
        return "modelsmith.io/canary-decision" not in annotations

    wait_for(annotation_removed, timeout=10, what="the decision annotation removed")


@pytest.fixture(scope="module")
def third_party_crds(dev_cluster: DevCluster) -> Iterator[None]:
    """The real Gateway API and KServe CRDs, from their Go modules."""
    files = crd_files("gateway-api") + crd_files("kserve")
    for path in files:
        dev_cluster.kubectl("apply", "--server-side", "-f", str(path))
    ext = client.ApiextensionsV1Api()

    def established(name: str) -> bool:
        conds = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    for crd in ("httproutes.gateway.networking.k8s.io", "inferenceservices.serving.kserve.io"):
        wait_for(lambda crd=crd: established(crd), timeout=60, what=f"{crd} established")
    yield


def _custom(group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        group, version, namespace, plural, name
    )
    return obj


def test_gateway_api_backend_moves_httproute_weights(
    third_party_crds: None, operator: KopfRunner, namespace: str
) -> None:
    slow = FAST_CANARY | {"interval": "10m", "analysisInterval": "1m"}
    traffic = {"backend": "gateway-api", "gatewayRef": {"name": "public", "namespace": "gw"}}
    _create(namespace, "chat", canary=slow, traffic=traffic)
    wait_for(lambda: _status(namespace, "chat").get("phase") == "Ready", timeout=60, what="Ready")
    v1 = _status(namespace, "chat")["stableRevision"]

    def split() -> list[tuple[str, int]]:
        route = _custom("gateway.networking.k8s.io", "v1", "httproutes", namespace, "chat")
        refs = route["spec"]["rules"][-1]["backendRefs"]
        return [(r["name"], r["weight"]) for r in refs]

    assert split() == [(v1, 100)]
    route = _custom("gateway.networking.k8s.io", "v1", "httproutes", namespace, "chat")
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "gw",
        }
    ]
    _patch(namespace, "chat", {"spec": {"model": {"uri": "file:///models/v2"}}})
    wait_for(lambda: len(split()) == 2 and split()[1][1] == 20, timeout=60, what="20% on canary")
    v2 = _status(namespace, "chat")["canaryRevision"]
    assert split() == [(v1, 80), (v2, 20)]
    assert (
        not client.AppsV1Api()
        .list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/component=router")
        .items
    ), "no router with the gateway backend"


def test_kserve_backend_writes_a_kserve_inferenceservice(
    third_party_crds: None, operator: KopfRunner, namespace: str
) -> None:
    slow = FAST_CANARY | {"interval": "10m", "analysisInterval": "1m"}
    _create(namespace, "chat", canary=slow, traffic={"backend": "kserve"})

    def kserve() -> dict[str, Any] | None:
        try:
            return _custom("serving.kserve.io", "v1beta1", "inferenceservices", namespace, "chat")
        except client.ApiException:
            return None

    wait_for(lambda: kserve() is not None, timeout=60, what="KServe InferenceService")
    predictor = (kserve() or {})["spec"]["predictor"]
    assert predictor["containers"][0]["name"] == "kserve-container"
    assert "canaryTrafficPercent" not in predictor


def test_a_failed_upstream_fails_a_service_that_serves_nothing_yet(
    operator: KopfRunner, namespace: str
) -> None:
    """Not 'waiting' forever: a failed QuantizeJob will never deliver the model."""
    failure = {"error": {"reason": "QualityGate", "message": "perplexity +40% > 5%"}}
    annotations = {
        "kwok.modelsmith.io/exit-code": "2",
        "kwok.modelsmith.io/termination-message": json.dumps(failure),
    }
    quantize = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "QuantizeJob",
        "metadata": {"name": "int8"},
        "spec": {
            "model": {"uri": "file:///models/chat"},
            "method": "int8-weight-only",
            "resources": {"cpu": "100m"},
            "podMetadata": {"annotations": annotations},
            "output": {"uri": "file:///models/chat-int8"},
        },
    }
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP_ARGS, namespace, "quantizejobs", quantize
    )
    _create(namespace, "chat", model={"fromRef": {"kind": "QuantizeJob", "name": "int8"}})
    status = wait_for(
        lambda: (s := _status(namespace, "chat")).get("phase") == "Failed" and s,
        timeout=90,
        what="the service to fail with its upstream",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "UpstreamFailed")
    assert "QuantizeJob/int8" in ready["message"]
    assert not _revisions(namespace), "nothing to serve, nothing deployed"
