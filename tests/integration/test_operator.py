"""The operator, run in-process by kopf, reconciling against the real control plane."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

GROUP_ARGS = ("modelsmith.io", "v1alpha1")


def _get(namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", name
    )
    return obj


def _create(namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"uri": "/data/raw", "format": "text"}],
            "output": {"uri": "/data/shards"},
        }
        | spec,
    }
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", body
    )


def _phase(namespace: str, name: str) -> str | None:
    phase: str | None = _get(namespace, name).get("status", {}).get("phase")
    return phase


def test_datapipeline_runs_to_success(operator: KopfRunner, namespace: str) -> None:
    _create(namespace, "corpus", workers=2)
    wait_for(lambda: _phase(namespace, "corpus") == "Succeeded", timeout=90, what="Succeeded")

    obj = _get(namespace, "corpus")
    status = obj["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Succeeded"]["status"] == "True"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["outputs"]["uri"] == "/data/shards"
    assert status["completionTime"]

    job = client.BatchV1Api().read_namespaced_job("corpus-run", namespace)
    assert job.spec.completions == 2
    assert job.metadata.owner_references[0].uid == obj["metadata"]["uid"]
    cm = client.CoreV1Api().read_namespaced_config_map("corpus-task", namespace)
    assert json.loads(cm.data["task.json"])["spec"]["workers"] == 2
    pods = client.CoreV1Api().list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-name=corpus-run"
    )
    assert len(pods.items) == 2


def test_suspended_pipeline_starts_no_pods_until_resumed(
    operator: KopfRunner, namespace: str
) -> None:
    _create(namespace, "paused", suspend=True)
    wait_for(lambda: _phase(namespace, "paused") == "Pending", timeout=60, what="Pending")
    conds = {c["type"]: c["status"] for c in _get(namespace, "paused")["status"]["conditions"]}
    assert conds["Suspended"] == "True"
    core = client.CoreV1Api()
    assert not core.list_namespaced_pod(
        namespace, label_selector="batch.kubernetes.io/job-name=paused-run"
    ).items

    client.CustomObjectsApi().patch_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", "paused", {"spec": {"suspend": False}}
    )
    wait_for(lambda: _phase(namespace, "paused") == "Succeeded", timeout=90, what="Succeeded")


def test_deleting_the_pipeline_garbage_collects_its_children(
    operator: KopfRunner, namespace: str
) -> None:
    _create(namespace, "gone")
    wait_for(lambda: _phase(namespace, "gone") == "Succeeded", timeout=90, what="Succeeded")
    client.CustomObjectsApi().delete_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", "gone"
    )
    batch = client.BatchV1Api()
    wait_for(
        lambda: not batch.list_namespaced_job(namespace).items,
        timeout=60,
        what="the Job to be garbage-collected",
    )


def test_kopf_bookkeeping_stays_out_of_status(operator: KopfRunner, namespace: str) -> None:
    _create(namespace, "tidy")
    wait_for(lambda: _phase(namespace, "tidy") == "Succeeded", timeout=90, what="Succeeded")
    obj = _get(namespace, "tidy")
    assert "kopf" not in obj["status"]
    assert any(k.startswith("modelsmith.io/") for k in obj["metadata"].get("annotations", {}))
