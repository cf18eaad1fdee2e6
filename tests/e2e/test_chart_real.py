"""The chart installed for real: the operator image runs as a pod on the real node.

The pod pulls the operator image from the dev registry and runs with the chart's
ServiceAccount, RBAC, probes and restricted security context; it must become Ready,
reconcile a resource, serve /metrics on its pod IP, and `helm test` must pass as a
real pod. The release watches only its own namespace, so it never competes with the
other tests' operators.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.nodeconfig import LABEL, NODE_NAME
from tests.e2e.conftest import chart_on_real_node
from tests.helpers import wait_for
from tests.integration.test_chart import helm

pytestmark = pytest.mark.integration

GROUP = ("modelsmith.io", "v1alpha1")
ESCAPED_LABEL = LABEL.replace(".", "\\.")  # helm --set splits keys on dots


@pytest.fixture
def release(dev_cluster: DevCluster, crds: list[str], pushed: dict[str, str]) -> Iterator[str]:
    with chart_on_real_node(dev_cluster, pushed["operator"], "real") as ns:
        yield ns


def _operator_pod(ns: str) -> client.V1Pod:
    pods = (
        client.CoreV1Api()
        .list_namespaced_pod(ns, label_selector="app.kubernetes.io/name=modelsmith")
        .items
    )
    running = [p for p in pods if not p.metadata.labels.get("modelsmith.io/test")]
    assert len(running) >= 1, [p.metadata.name for p in pods]
    return running[0]


def test_the_chart_runs_the_operator_image_on_the_real_node(
    dev_cluster: DevCluster, release: str
) -> None:
    pod = _operator_pod(release)
    assert pod.spec.node_name == NODE_NAME
    assert pod.status.container_statuses[0].ready
    assert pod.status.container_statuses[0].restart_count == 0
    security = pod.spec.containers[0].security_context
    assert security.read_only_root_filesystem is True
    assert security.capabilities.drop == ["ALL"]
    assert pod.spec.service_account_name.endswith("modelsmith")

    # It reconciles: a DataPipeline on a claim that does not exist gets its condition.
    body: dict[str, Any] = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": "watched"},
        "spec": {
            "sources": [{"uri": "pvc://nowhere/corpus.jsonl", "format": "jsonl"}],
            "output": {"uri": "pvc://nowhere/shards"},
        },
    }
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(*GROUP, release, "datapipelines", body)

    def reason() -> str | None:
        obj = api.get_namespaced_custom_object(*GROUP, release, "datapipelines", "watched")
        for cond in obj.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready":
                return str(cond["reason"])
        return None

    assert wait_for(reason, timeout=90, what="the chart's operator to reconcile") == (
        "ClaimNotFound"
    )

    # Its /metrics, on the pod's own IP (the host routes the real node's pod network).
    port = next(p.container_port for p in pod.spec.containers[0].ports if p.name == "metrics")
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "modelsmith_" in text

    logs = dev_cluster.kubectl("logs", "-n", release, pod.metadata.name)
    assert "watched" in logs

    out = helm(dev_cluster, "test", "real", "--namespace", release, "--timeout", "180s")
    assert "Succeeded" in out.stdout, out.stdout
    events = json.loads(dev_cluster.kubectl("get", "events", "-n", release, "-o", "json"))["items"]
    scheduled = [
        e["message"]
        for e in events
        if e["reason"] == "Scheduled" and "test-ready" in e["involvedObject"]["name"]
    ]
    assert scheduled and all(m.endswith(f"to {NODE_NAME}") for m in scheduled), scheduled
    pulled = [e for e in events if e["reason"] in ("Pulling", "Pulled")]
    assert pulled, "the operator image comes from the registry through the kubelet"
