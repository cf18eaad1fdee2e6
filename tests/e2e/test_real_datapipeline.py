"""A DataPipeline in the data image, in a real pod on the real node, as a user runs it.

The operator (a process of its own, as installed: node paths refused) turns the
resource into a Job; the pod pulls the image from the dev registry, reads the corpus
from a claim mounted read-only, writes shards to the claim mounted read-write as uid
10001 under a read-only root, and the operator copies the real result from the
container's termination message into status.outputs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelsmith.contract import COMPLETION_MARKER
from modelsmith.devcluster.cluster import DevCluster
from tests.e2e.conftest import ON_REAL_NODE
from tests.helpers import wait_for
from tests.integration.claims import bound_claims, claim
from tests.integration.operator_process import OperatorProcess, operator_process
from tests.workloads.corpus import write_jsonl
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


def _own(path: Path, uid: int = 10001) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files, "."]:
            os.chown(Path(root) / name, uid, uid)


def _pipeline(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": "real"},
        "spec": {
            "sources": [{"uri": "pvc://artifacts/raw/corpus.jsonl", "format": "jsonl"}],
            "output": {"uri": "pvc://artifacts/shards/real"},
            "workers": 1,
            "image": image,
            "resources": {"cpu": "500m", "memory": "1Gi"},
            "storage": {"scratchSize": "1Gi"},
            **ON_REAL_NODE,
        },
    }


def test_datapipeline_runs_in_a_real_pod_and_reports_its_real_result(
    installed_operator: OperatorProcess,
    namespace: str,
    pushed: dict[str, str],
) -> None:
    with bound_claims(namespace, claim("artifacts", "ReadWriteOnce")) as [volume]:
        root = Path(f"/tmp/modelsmith-pv/{volume}")  # noqa: S108 (claims.py's hostPath)
        texts = list(documents(120, seed=7))
        write_jsonl(texts, root / "raw" / "corpus.jsonl")
        _own(root)
        client.CustomObjectsApi().create_namespaced_custom_object(
            *GROUP, namespace, "datapipelines", _pipeline(pushed["data"])
        )

        def finished() -> dict[str, Any] | None:
            obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
                *GROUP, namespace, "datapipelines", "real"
            )
            status = obj.get("status", {})
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for(finished, timeout=300, what="the DataPipeline to finish")
        pods = client.CoreV1Api().list_namespaced_pod(namespace).items
        assert status["phase"] == "Succeeded", (status, installed_operator.output()[-3000:])
        assert {p.spec.node_name for p in pods} == {"modelsmith-node"}
        terminated = pods[0].status.container_statuses[0].state.terminated
        result = json.loads(terminated.message)

        outputs = status["outputs"]
        assert outputs["uri"] == "pvc://artifacts/shards/real"
        assert outputs["digest"] == result["digest"]
        published = root / "shards" / "real"
        assert (published / COMPLETION_MARKER).is_file()
        assert published.stat().st_uid == 10001
        assert outputs["sizeBytes"] > 0
