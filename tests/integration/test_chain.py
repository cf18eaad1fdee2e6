"""The chain DataPipeline → PretrainJob → FineTune → QuantizeJob, through fromRef.

Everything is applied at once, in reverse order, as Argo CD might: each stage must
wait for its upstream, then run on the fake GPU nodes and record where its input
came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client

from modelsmith.batchkinds import PLURALS
from tests.helpers import wait_for
from tests.integration.claims import bound_claims, sample_claim

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
GROUP = ("modelsmith.io", "v1alpha1")


def _docs() -> list[dict[str, Any]]:
    chain = [d for d in yaml.safe_load_all((SAMPLES / "chain.yaml").read_text()) if d]
    data = yaml.safe_load((SAMPLES / "datapipeline.yaml").read_text())
    return [data, *(d for d in chain if d["kind"] in PLURALS)]


def _create(namespace: str, doc: dict[str, Any]) -> None:
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP, namespace, PLURALS[doc["kind"]], doc
    )


def _get(namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP, namespace, PLURALS[kind], name
    )
    return obj


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


@pytest.fixture(autouse=True)
def _artifacts_claim(namespace: str) -> Iterator[None]:
    """The claim samples/storage.yaml asks users to create before the chain."""
    with bound_claims(namespace, sample_claim()):
        yield


def test_chain_runs_in_order_and_records_lineage(operator: KopfRunner, namespace: str) -> None:
    docs = _docs()
    for doc in reversed(docs):
        _create(namespace, doc)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]

    # The last stage waits on the one before it, which does not exist yet as Succeeded.
    quantize = wait_for(
        lambda: _conditions(_get(namespace, "QuantizeJob", "tiny-llama-chat-int4")).get("Ready"),
        what="the QuantizeJob's first status",
    )
    assert quantize["reason"] == "WaitingForInput"
    assert "FineTune/tiny-llama-chat" in quantize["message"]

    for kind, name in names:
        wait_for(
            lambda k=kind, n=name: (
                _get(namespace, k, n).get("status", {}).get("phase") == "Succeeded"
            ),
            timeout=120,
            what=f"{kind}/{name} to succeed",
        )

    upstream_uri = {
        "PretrainJob": "pvc://modelsmith-artifacts/shards/tiny-corpus",
        "FineTune": "pvc://modelsmith-artifacts/models/tiny-llama",
        "QuantizeJob": "pvc://modelsmith-artifacts/models/tiny-llama-chat",
    }
    for kind, uri in upstream_uri.items():
        name = next(n for k, n in names if k == kind)
        lineage = _get(namespace, kind, name)["status"]["lineage"]
        assert uri in [entry["uri"] for entry in lineage], (kind, lineage)

    core = client.CoreV1Api()
    pretrain_pods = core.list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-name=tiny-llama-run"
    ).items
    assert len(pretrain_pods) == 2
    nodes = {p.spec.node_name for p in pretrain_pods}
    assert len(nodes) == 2, "2 pods x 8 GPUs need both 8-GPU nodes"
    for pod in pretrain_pods:
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
    service = core.read_namespaced_service("tiny-llama-workers", namespace)
    assert service.spec.cluster_ip == "None"
    _every_pod_mounts_the_claim(namespace)


def _every_pod_mounts_the_claim(namespace: str) -> None:
    """Each stage's pods as the API server has them: the claim read-write where the
    output is, read-only where inputs are, writable by the images' uid via fsGroup."""
    pods = client.CoreV1Api().list_namespaced_pod(namespace).items
    assert {p.metadata.labels["batch.kubernetes.io/job-name"] for p in pods} == {
        "tiny-corpus-run",
        "tiny-llama-run",
        "tiny-llama-chat-run",
        "tiny-llama-chat-int4-run",
    }
    for pod in pods:
        security = pod.spec.security_context
        assert (security.fs_group, security.fs_group_change_policy) == (10001, "OnRootMismatch")
        assert security.run_as_non_root is True
        [claim] = [v for v in pod.spec.volumes if v.persistent_volume_claim]
        assert claim.persistent_volume_claim.claim_name == "modelsmith-artifacts"
        assert not claim.persistent_volume_claim.read_only
        container = pod.spec.containers[0]
        assert container.security_context.read_only_root_filesystem is True
        modes = {
            m.mount_path: bool(m.read_only) for m in container.volume_mounts if m.name == claim.name
        }
        assert modes == {
            "/mnt/modelsmith/rw/modelsmith-artifacts": False,
            "/mnt/modelsmith/ro/modelsmith-artifacts": True,
        }, pod.metadata.name
        env = {e.name: e.value for e in container.env}
        table = json.loads(env["MODELSMITH_MOUNTS"])
        assert table["pvc://modelsmith-artifacts"] == "/mnt/modelsmith/rw/modelsmith-artifacts"
        reads = {k: v for k, v in table.items() if k != "pvc://modelsmith-artifacts"}
        assert reads, pod.metadata.name
        assert all(v.startswith("/mnt/modelsmith/ro/modelsmith-artifacts/") for v in reads.values())


def test_missing_upstream_is_waited_for_and_failed_upstream_fails(
    operator: KopfRunner, namespace: str
) -> None:
    docs = {d["kind"]: d for d in _docs()}
    finetune = docs["FineTune"]
    _create(namespace, finetune)
    ready = wait_for(
        lambda: _conditions(_get(namespace, "FineTune", "tiny-llama-chat")).get("Ready"),
        what="the FineTune's first status",
    )
    assert ready["reason"] == "UpstreamNotFound"
    assert "PretrainJob/tiny-llama" in ready["message"]
    assert not client.BatchV1Api().list_namespaced_job(namespace).items

    pretrain = docs["PretrainJob"]
    pretrain["spec"]["dataset"] = {"uri": "file:///data/shards/x"}
    pretrain["spec"]["runPolicy"] = {"backoffLimit": 0}
    # kwok plays the trainer: exit code 1, so the Job fails and so must the FineTune.
    pretrain["spec"]["podMetadata"] = {"annotations": {"kwok.modelsmith.io/exit-code": "1"}}
    _create(namespace, pretrain)
    wait_for(
        lambda: (
            _get(namespace, "PretrainJob", "tiny-llama").get("status", {}).get("phase") == "Failed"
        ),
        timeout=90,
        what="the PretrainJob to fail",
    )

    def finetune_failed() -> dict[str, Any] | None:
        failed = _conditions(_get(namespace, "FineTune", "tiny-llama-chat")).get("Failed")
        return failed if failed and failed["status"] == "True" else None

    failed = wait_for(finetune_failed, timeout=60, what="the FineTune to fail with its upstream")
    assert failed["reason"] == "UpstreamFailed"
    assert _get(namespace, "FineTune", "tiny-llama-chat")["status"]["phase"] == "Failed"
    jobs = [j.metadata.name for j in client.BatchV1Api().list_namespaced_job(namespace).items]
    assert jobs == ["tiny-llama-run"], "nothing may run on a failed input"


def test_workload_result_becomes_status_outputs(operator: KopfRunner, namespace: str) -> None:
    doc = _docs()[0]
    doc["spec"]["podMetadata"] = {
        "annotations": {
            "kwok.modelsmith.io/termination-message": (
                '{"uri": "file:///data/shards/tiny-corpus/v1", "digest": "sha256:abc",'
                ' "metrics": {"tokens": 123456, "duplicateRate": 0.12}}'
            )
        }
    }
    _create(namespace, doc)
    wait_for(
        lambda: (
            _get(namespace, "DataPipeline", "tiny-corpus").get("status", {}).get("phase")
            == "Succeeded"
        ),
        timeout=90,
        what="the pipeline to succeed",
    )
    outputs = _get(namespace, "DataPipeline", "tiny-corpus")["status"]["outputs"]
    assert outputs == {
        "uri": "file:///data/shards/tiny-corpus/v1",
        "digest": "sha256:abc",
        "metrics": {"tokens": 123456.0, "duplicateRate": 0.12},
    }
