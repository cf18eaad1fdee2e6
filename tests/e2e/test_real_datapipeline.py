"""A DataPipeline in the data image, in a real pod on the real node, as a user runs it.

The operator (a process of its own, as installed: node paths refused) turns the
resource into a Job; the pod pulls the image from the dev registry, reads the raw
corpus from the dev object store (credentials from a Secret, the store by its Service
name), writes shards as uid 10001 under a read-only root, either to a claim the dev
cluster's provisioner made for it or back to the object store, and the operator copies
the real result from the container's termination message into status.outputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelsmith.contract import COMPLETION_MARKER
from modelsmith.devcluster.cluster import DevCluster
from tests.e2e.conftest import ON_REAL_NODE
from tests.helpers import wait_for
from tests.integration.claims import sample_claim
from tests.integration.operator_process import OperatorProcess, operator_process
from tests.workloads.s3 import S3
from tests.workloads.tiny_dataset import documents

pytestmark = pytest.mark.integration

GROUP = ("modelsmith.io", "v1alpha1")


@pytest.fixture
def installed_operator(
    dev_cluster: DevCluster, crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    env = {"MODELSMITH_ALLOW_NODE_PATHS": "false"}
    args = (f"--namespace={namespace}", "--metrics-port=0")
    with operator_process(dev_cluster.kubeconfig, tmp_path / "op.log", *args, env=env) as op:
        yield op


def _pipeline(image: str, source: str, output: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": "real"},
        "spec": {
            "sources": [{"uri": source, "format": "jsonl"}],
            "output": {"uri": output},
            "workers": 1,
            "image": image,
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "storage": {"scratchSize": "1Gi", "secretRef": {"name": "s3"}},
            **ON_REAL_NODE,
        },
    }


def _upload_corpus(s3: S3) -> str:
    texts = documents(120, seed=7)
    s3.put("raw/corpus.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    return s3.uri("raw/corpus.jsonl")


def _run(namespace: str, body: dict[str, Any], op: OperatorProcess) -> tuple[dict[str, Any], Any]:
    """Create the DataPipeline, wait for it to end; its status and the pod's result."""
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(*GROUP, namespace, "datapipelines", body)

    def finished() -> dict[str, Any] | None:
        obj: dict[str, Any] = api.get_namespaced_custom_object(
            *GROUP, namespace, "datapipelines", "real"
        )
        status = obj.get("status", {})
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, timeout=300, what="the DataPipeline to finish")
    pods = client.CoreV1Api().list_namespaced_pod(namespace).items
    assert status["phase"] == "Succeeded", (status, op.output()[-3000:])
    assert {p.spec.node_name for p in pods} == {"modelsmith-node"}
    terminated = pods[0].status.container_statuses[0].state.terminated
    return status, json.loads(terminated.message)


def test_datapipeline_reads_s3_and_publishes_to_a_provisioned_claim(
    installed_operator: OperatorProcess,
    namespace: str,
    pushed: dict[str, str],
    dev_s3: S3,
) -> None:
    # The claim the samples tell users to create, as it is: no PV made by hand.
    client.CoreV1Api().create_namespaced_persistent_volume_claim(namespace, sample_claim())
    source = _upload_corpus(dev_s3)
    body = _pipeline(pushed["data"], source, "pvc://modelsmith-artifacts/shards/real")
    status, result = _run(namespace, body, installed_operator)

    outputs = status["outputs"]
    assert outputs["uri"] == "pvc://modelsmith-artifacts/shards/real"
    assert outputs["digest"] == result["digest"]
    assert outputs["sizeBytes"] > 0
    core = client.CoreV1Api()
    claim = core.read_namespaced_persistent_volume_claim("modelsmith-artifacts", namespace)
    volume = core.read_persistent_volume(claim.spec.volume_name)
    published = Path(volume.spec.host_path.path) / "shards" / "real"
    assert (published / COMPLETION_MARKER).is_file()
    assert published.stat().st_uid == 10001


def test_datapipeline_publishes_to_the_object_store(
    installed_operator: OperatorProcess,
    namespace: str,
    pushed: dict[str, str],
    dev_s3: S3,
) -> None:
    source = _upload_corpus(dev_s3)
    output = dev_s3.uri("shards/real")
    status, result = _run(namespace, _pipeline(pushed["data"], source, output), installed_operator)

    assert status["outputs"]["uri"] == output
    assert status["outputs"]["digest"] == result["digest"]
    keys = dev_s3.keys("shards/real/")
    assert f"shards/real/{COMPLETION_MARKER}" in keys, keys
    marker = json.loads(dev_s3.get(f"shards/real/{COMPLETION_MARKER}"))
    assert marker["digest"] == result["digest"]
