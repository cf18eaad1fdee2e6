"""The operator, run in-process by kopf, reconciling against the real control plane."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from prometheus_client import REGISTRY

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


def test_suspend_mid_run_stops_the_pods_and_resume_finishes(
    operator: KopfRunner, namespace: str
) -> None:
    _create(
        namespace,
        "mid",
        podMetadata={"annotations": {"kwok.modelsmith.io/run-duration": "8s"}},
    )
    wait_for(lambda: _phase(namespace, "mid") == "Running", timeout=60, what="Running")
    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    selector = "batch.kubernetes.io/job-name=mid-run"
    api.patch_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", "mid", {"spec": {"suspend": True}}
    )
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector=selector).items,
        timeout=60,
        what="the running pods to be stopped",
    )
    wait_for(
        lambda: (
            {c["type"]: c["status"] for c in _get(namespace, "mid")["status"]["conditions"]}.get(
                "Suspended"
            )
            == "True"
        ),
        what="Suspended=True",
    )
    api.patch_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", "mid", {"spec": {"suspend": False}}
    )
    wait_for(lambda: _phase(namespace, "mid") == "Succeeded", timeout=90, what="Succeeded")


def test_operator_restart_mid_run_loses_nothing_and_duplicates_nothing(
    crds: list[str], namespace: str
) -> None:
    args = ["run", "--standalone", "--namespace", namespace, "-m", "modelsmith.kopf_entry"]
    with KopfRunner(args, timeout=60) as first:
        _create(
            namespace,
            "steady",
            workers=2,
            podMetadata={"annotations": {"kwok.modelsmith.io/run-duration": "10s"}},
        )
        wait_for(lambda: _phase(namespace, "steady") == "Running", timeout=60, what="Running")
        started = _get(namespace, "steady")["status"]["startTime"]
    assert first.exception is None, first.output

    with KopfRunner(args, timeout=60) as second:
        wait_for(lambda: _phase(namespace, "steady") == "Succeeded", timeout=90, what="Succeeded")
    assert second.exception is None, second.output

    assert _get(namespace, "steady")["status"]["startTime"] == started
    jobs = client.BatchV1Api().list_namespaced_job(namespace).items
    assert [j.metadata.name for j in jobs] == ["steady-run"]
    pods = client.CoreV1Api().list_namespaced_pod(namespace).items
    assert len(pods) == 2, [p.metadata.name for p in pods]


def test_phase_changes_are_recorded_as_events(operator: KopfRunner, namespace: str) -> None:
    _create(namespace, "noisy")
    wait_for(lambda: _phase(namespace, "noisy") == "Succeeded", timeout=90, what="Succeeded")

    def reasons() -> set[str]:
        events = (
            client.CoreV1Api()
            .list_namespaced_event(
                namespace,
                field_selector="involvedObject.name=noisy,involvedObject.kind=DataPipeline",
            )
            .items
        )
        return {e.reason for e in events}

    # The first phase is Pending or, when the Job controller is quick, already Running.
    def complete() -> bool:
        seen = reasons()
        return "Succeeded" in seen and bool(seen & {"Pending", "Running"})

    deadline = time.monotonic() + 30
    while not complete() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert complete(), (reasons(), _get(namespace, "noisy")["status"])


def test_resources_can_be_deleted_while_the_operator_is_down(
    crds: list[str], namespace: str
) -> None:
    """No kopf finalizer: uninstalling the operator must not wedge deletes or namespaces."""
    args = ["run", "--standalone", "--namespace", namespace, "-m", "modelsmith.kopf_entry"]
    with KopfRunner(args, timeout=60) as runner:
        _create(namespace, "orphan")
        wait_for(lambda: _phase(namespace, "orphan") == "Succeeded", timeout=90, what="Succeeded")
    assert runner.exception is None, runner.output
    assert not _get(namespace, "orphan")["metadata"].get("finalizers")
    client.CustomObjectsApi().delete_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", "orphan"
    )

    def gone() -> bool:
        names = client.CustomObjectsApi().list_namespaced_custom_object(
            *GROUP_ARGS, namespace, "datapipelines"
        )["items"]
        return not names

    wait_for(gone, timeout=30, what="the resource to be deleted without an operator")


def _reconciles(kind: str) -> float:
    """Reconciles of ``kind`` this process has run, whatever their outcome."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "modelsmith_reconciles"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("kind") == kind
    )


def test_a_finished_run_stays_finished_when_its_job_is_gone(
    crds: list[str], namespace: str
) -> None:
    """ttlSecondsAfterFinished deletes the Job; a restarted operator must not run the whole
    job again (it did: the resume re-applied the Job and the status went back to Pending)."""
    args = ["run", "--standalone", "--namespace", namespace, "-m", "modelsmith.kopf_entry"]
    with KopfRunner(args, timeout=60) as first:
        _create(namespace, "once", runPolicy={"ttlSecondsAfterFinished": 0})
        wait_for(lambda: _phase(namespace, "once") == "Succeeded", timeout=90, what="Succeeded")
        wait_for(
            lambda: not client.BatchV1Api().list_namespaced_job(namespace).items,
            timeout=60,
            what="the TTL controller to delete the finished Job",
        )
    assert first.exception is None, first.output
    finished = _get(namespace, "once")["status"]

    before = _reconciles("DataPipeline")
    with KopfRunner(args, timeout=60) as second:
        # The resume handler ran (in this process: the runner is in-process).
        wait_for(lambda: _reconciles("DataPipeline") > before, timeout=30, what="the resume")
        time.sleep(2)  # a Job it had applied would be there by now
    assert second.exception is None, second.output
    assert not client.BatchV1Api().list_namespaced_job(namespace).items, "the run started again"
    assert _get(namespace, "once")["status"] == finished
