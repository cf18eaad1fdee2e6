"""Storage refusals and the default store, against the real API server and PV controller.

Each refusal must say why in the resource's own status and create no Job: a claim that
does not exist, a ReadWriteOnce claim under a two-pod run, a Secret that does not exist,
a node path where the operator is not told nodes have it, and no store at all. The
chart's admission policy refuses node paths even earlier, at `kubectl apply`. The
operators here run as processes without the test tier's allowNodePaths, as a real
install would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from modelsmith.devcluster.cluster import DevCluster
from tests.helpers import kubectl_apply, wait_for
from tests.integration.claims import bound_claims, claim
from tests.integration.operator_process import OperatorProcess, operator_process
from tests.integration.test_chart import CHART, helm

pytestmark = pytest.mark.integration

GROUP = ("modelsmith.io", "v1alpha1")
STORE_ENV = {
    "MODELSMITH_ALLOW_NODE_PATHS": "false",
    "MODELSMITH_DEFAULT_STORAGE": "pvc://store",
}


@pytest.fixture
def real_operator(
    dev_cluster: DevCluster, crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    args = (f"--namespace={namespace}", "--metrics-port=0")
    with operator_process(dev_cluster.kubeconfig, tmp_path / "op.log", *args, env=STORE_ENV) as op:
        yield op


def _pipeline(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": name},
        "spec": {"sources": [{"uri": "pvc://raw/corpus.jsonl", "format": "jsonl"}]} | spec,
    }


def _create(namespace: str, doc: dict[str, Any]) -> None:
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP, namespace, "datapipelines", doc
    )


def _get(namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP, namespace, "datapipelines", name
    )
    return obj


def _ready(namespace: str, name: str, reason: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for cond in _get(namespace, name).get("status", {}).get("conditions", []):
            if cond["type"] == "Ready" and cond["reason"] == reason:
                return dict(cond)
        return None

    return wait_for(found, timeout=60, what=f"{name}: Ready=False with reason {reason}")


def _jobs(namespace: str) -> list[str]:
    return [j.metadata.name for j in client.BatchV1Api().list_namespaced_job(namespace).items]


def _events(namespace: str, name: str) -> list[str]:
    events = (
        client.CoreV1Api()
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        .items
    )
    return [e.reason for e in events]


def test_a_missing_claim_is_a_condition_until_it_exists(
    real_operator: OperatorProcess, namespace: str
) -> None:
    _create(namespace, _pipeline("waits", output={"uri": "pvc://out/shards"}))
    ready = _ready(namespace, "waits", "ClaimNotFound")
    assert ready["status"] == "False"
    assert "PersistentVolumeClaim out, raw not found" in ready["message"]
    assert _get(namespace, "waits")["status"]["phase"] == "Pending"
    assert _jobs(namespace) == []
    wait_for(lambda: "ClaimNotFound" in _events(namespace, "waits"), what="a Warning event")

    with bound_claims(namespace, claim("out", "ReadWriteOnce"), claim("raw", "ReadOnlyMany")):
        # Nothing the operator may watch announces a claim: it looks again by itself.
        wait_for(lambda: _jobs(namespace) == ["waits-run"], timeout=60, what="the Job")
        job = client.BatchV1Api().read_namespaced_job("waits-run", namespace)
        volumes = {v.name: v.persistent_volume_claim for v in job.spec.template.spec.volumes}
        claims = {v.claim_name: bool(v.read_only) for v in volumes.values() if v is not None}
        assert claims == {"out": False, "raw": True}


def test_a_read_write_once_claim_refuses_a_two_pod_run(
    real_operator: OperatorProcess, namespace: str
) -> None:
    with bound_claims(namespace, claim("out", "ReadWriteOnce"), claim("raw", "ReadOnlyMany")):
        _create(namespace, _pipeline("two", output={"uri": "pvc://out/shards"}, workers=2))
        ready = _ready(namespace, "two", "ClaimAccessModeConflict")
        assert (
            "this run has 2 pods but PersistentVolumeClaim out is ReadWriteOnce"
            in (ready["message"])
        )
        assert "ReadWriteMany" in ready["message"]
        assert _jobs(namespace) == []


def test_a_missing_secret_is_a_condition_until_it_exists(
    real_operator: OperatorProcess, namespace: str
) -> None:
    doc = _pipeline(
        "keys",
        sources=[{"uri": "s3://raw-bucket/corpus.jsonl", "format": "jsonl"}],
        output={"uri": "s3://out-bucket/shards"},
        storage={"secretRef": {"name": "s3-keys"}},
    )
    _create(namespace, doc)
    ready = _ready(namespace, "keys", "SecretNotFound")
    assert "Secret s3-keys (storage credentials) not found" in ready["message"]
    assert _jobs(namespace) == []

    client.CoreV1Api().create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "s3-keys"},
            "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
        },
    )
    wait_for(lambda: _jobs(namespace) == ["keys-run"], timeout=60, what="the Job")
    pod = client.BatchV1Api().read_namespaced_job("keys-run", namespace).spec.template.spec
    env = {e.name: e.value_from.secret_key_ref for e in pod.containers[0].env if e.value_from}
    assert env["AWS_SECRET_ACCESS_KEY"].name == "s3-keys"
    assert not [v for v in pod.volumes if v.persistent_volume_claim]


def test_node_paths_are_refused_where_the_operator_is_not_told_of_them(
    real_operator: OperatorProcess, namespace: str
) -> None:
    _create(namespace, _pipeline("local", output={"uri": "file:///data/shards"}))
    ready = _ready(namespace, "local", "InvalidSpec")
    assert "spec.output.uri: file:///data/shards is a path on the node" in ready["message"]
    assert _jobs(namespace) == []


def test_without_output_uri_the_run_publishes_under_the_default_store(
    real_operator: OperatorProcess, namespace: str
) -> None:
    with bound_claims(namespace, claim("store", "ReadWriteOnce"), claim("raw", "ReadOnlyMany")):
        _create(namespace, _pipeline("stored"))
        wait_for(lambda: _jobs(namespace) == ["stored-run"], timeout=60, what="the Job")
    uid = _get(namespace, "stored")["metadata"]["uid"]
    config = client.CoreV1Api().read_namespaced_config_map("stored-task", namespace)
    task = json.loads(config.data["task.json"])
    assert task["output"] == f"pvc://store/{namespace}/datapipeline/stored/{uid}"
    assert task["uid"] == uid


def test_without_any_store_the_run_says_storage_is_not_configured(
    dev_cluster: DevCluster, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    args = (f"--namespace={namespace}", "--metrics-port=0")
    env = {"MODELSMITH_DEFAULT_STORAGE": "", "MODELSMITH_ALLOW_NODE_PATHS": "false"}
    with operator_process(dev_cluster.kubeconfig, tmp_path / "op.log", *args, env=env):
        _create(namespace, _pipeline("nowhere"))
        ready = _ready(namespace, "nowhere", "StorageNotConfigured")
        assert (
            "spec.output.uri is not set and the operator has no default store" in (ready["message"])
        )
        assert _jobs(namespace) == []


def test_the_charts_policy_refuses_node_paths_at_apply_time(
    dev_cluster: DevCluster, crds: list[str], namespace: str
) -> None:
    """The chart's default render, with its binding narrowed to this test's namespace
    (the rest of the session names node paths on purpose)."""
    docs = [
        d for d in yaml.safe_load_all(helm(dev_cluster, "template", "ms", str(CHART)).stdout) if d
    ]
    policy, binding = [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    for doc in (policy, binding):
        dev_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
    try:
        local = _pipeline("local", output={"uri": "pvc://out/shards"})
        local["spec"]["sources"] = [{"uri": "file:///data/raw.txt", "format": "text"}]

        def refused() -> str | None:
            proc = kubectl_apply(dev_cluster, namespace, local)
            return proc.stderr if proc.returncode != 0 else None

        stderr = wait_for(refused, timeout=30, what="the policy to take effect")
        assert "DataPipeline spec.sources[*].uri: file:// and bare paths" in stderr
        assert "storage.allowNodePaths" in stderr
        serving = {
            "apiVersion": "modelsmith.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "chat"},
            "spec": {"model": {"uri": "/models/chat"}},
        }
        proc = kubectl_apply(dev_cluster, namespace, serving)
        assert proc.returncode != 0 and "InferenceService spec.model.uri" in proc.stderr
        assert kubectl_apply(dev_cluster, namespace, _pipeline("claims")).returncode == 0
    finally:
        for doc in (binding, policy):
            dev_cluster.kubectl("delete", doc["kind"], doc["metadata"]["name"], "--wait")


def test_a_served_models_missing_claim_is_a_condition_until_it_exists(
    real_operator: OperatorProcess, namespace: str
) -> None:
    serving = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": {"model": {"uri": "pvc://models/chat/v1"}, "resources": {"cpu": "100m"}},
    }
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP, namespace, "inferenceservices", serving
    )

    def ready() -> dict[str, Any] | None:
        obj = client.CustomObjectsApi().get_namespaced_custom_object(
            *GROUP, namespace, "inferenceservices", "chat"
        )
        conds = obj.get("status", {}).get("conditions", [])
        found = [c for c in conds if c["type"] == "Ready" and c["reason"] == "ClaimNotFound"]
        return found[0] if found else None

    refused = wait_for(ready, timeout=60, what="Ready=False with reason ClaimNotFound")
    assert "the model: PersistentVolumeClaim models not found" in refused["message"]
    apps = client.AppsV1Api()
    assert apps.list_namespaced_deployment(namespace).items == []
    with bound_claims(namespace, claim("models", "ReadOnlyMany")):
        servers = wait_for(
            lambda: (
                apps.list_namespaced_deployment(
                    namespace, label_selector="app.kubernetes.io/component=server"
                ).items
            ),
            timeout=60,
            what="the revision's Deployment",
        )
        volumes = servers[0].spec.template.spec.volumes
        [model] = [v.persistent_volume_claim for v in volumes if v.persistent_volume_claim]
        assert (model.claim_name, model.read_only) == ("models", True)
