"""What the operator does when things go wrong: worker failures, bad input, bad specs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

GROUP_ARGS = ("modelsmith.io", "v1alpha1")
PLURALS = {"PretrainJob": "pretrainjobs", "FineTune": "finetunes", "DataPipeline": "datapipelines"}


def _create(namespace: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP_ARGS, namespace, PLURALS[kind], body
    )


def _get(namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP_ARGS, namespace, PLURALS[kind], name
    )
    return obj


def _status(namespace: str, kind: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = _get(namespace, kind, name).get("status", {})
    return status


def _conditions(namespace: str, kind: str, name: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in _status(namespace, kind, name).get("conditions", [])}


def _pretrain(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "dataset": {"uri": "/data/shards"},
        "architecture": {"layers": 2, "hiddenSize": 128, "heads": 4},
        "training": {"globalBatchSize": 8, "microBatchSize": 1, "learningRate": 1e-3, "steps": 100},
        "distribution": {"nodes": 1},
        "resources": {"gpus": 8},
        "podMetadata": {"annotations": annotations},
        "output": {"uri": "/data/model"},
    }


def _pods(namespace: str, job: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = (
        client.CoreV1Api()
        .list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}")
        .items
    )
    return pods


def test_failed_worker_is_retried_and_status_shows_the_checkpoint(
    operator: KopfRunner, namespace: str
) -> None:
    crash = {
        "checkpoint": {"uri": "/data/model-checkpoints/step-00000050", "step": 50},
        "progress": {"step": 57, "total": 100},
        "error": {"reason": "NCCLTimeout", "message": "rank 3 stopped answering"},
    }
    _create(
        namespace,
        "PretrainJob",
        "flaky",
        _pretrain(
            {
                "kwok.modelsmith.io/fail-attempts": "1",
                "kwok.modelsmith.io/fail-message": json.dumps(crash),
            }
        ),
    )
    wait_for(
        lambda: _status(namespace, "PretrainJob", "flaky").get("phase") == "Succeeded",
        timeout=120,
        what="the retried run to succeed",
    )
    status = _status(namespace, "PretrainJob", "flaky")
    assert status["restarts"] == 1
    assert status["lastCheckpoint"] == {"uri": "/data/model-checkpoints/step-00000050", "step": 50}
    attempts = sorted(
        (p.metadata.annotations["batch.kubernetes.io/job-index-failure-count"], p.status.phase)
        for p in _pods(namespace, "flaky-run")
    )
    assert attempts == [("0", "Failed"), ("1", "Succeeded")], "one retry, told it is attempt 1"


def test_bad_input_fails_at_once_with_the_workers_reason(
    operator: KopfRunner, namespace: str
) -> None:
    message = {"error": {"reason": "EmptyCorpus", "message": "no documents left after filters"}}
    _create(
        namespace,
        "PretrainJob",
        "doomed",
        _pretrain(
            {
                "kwok.modelsmith.io/exit-code": "2",
                "kwok.modelsmith.io/termination-message": json.dumps(message),
            }
        ),
    )
    wait_for(
        lambda: _status(namespace, "PretrainJob", "doomed").get("phase") == "Failed",
        timeout=90,
        what="Failed",
    )
    failed = _conditions(namespace, "PretrainJob", "doomed")["Failed"]
    assert failed["status"] == "True"
    assert "EmptyCorpus: no documents left after filters" in failed["message"]
    assert len(_pods(namespace, "doomed-run")) == 1, "exit code 2 must not be retried"


def test_a_spec_naming_itself_is_invalid_and_creates_nothing(
    operator: KopfRunner, namespace: str
) -> None:
    _create(
        namespace,
        "FineTune",
        "ouroboros",
        {
            "baseModel": {"fromRef": {"kind": "FineTune", "name": "ouroboros"}},
            "dataset": {"uri": "/data/chat.jsonl"},
            "method": "lora",
            "output": {"uri": "/data/ft"},
        },
    )
    ready = wait_for(
        lambda: _conditions(namespace, "FineTune", "ouroboros").get("Ready"),
        what="a Ready condition",
    )
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "baseModel.fromRef names this FineTune itself" in ready["message"]
    assert _status(namespace, "FineTune", "ouroboros")["phase"] == "Failed"
    assert not client.BatchV1Api().list_namespaced_job(namespace).items
    assert (
        not client.CoreV1Api()
        .list_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/managed-by=modelsmith"
        )
        .items
    )
    events = client.CoreV1Api().list_namespaced_event(
        namespace, field_selector="involvedObject.name=ouroboros"
    )
    assert any(e.type == "Warning" and e.reason == "InvalidSpec" for e in events.items)


def test_spec_change_a_running_job_cannot_take_is_a_condition(
    operator: KopfRunner, namespace: str
) -> None:
    _create(
        namespace,
        "DataPipeline",
        "busy",
        {
            "sources": [{"uri": "/data/raw", "format": "text"}],
            "podMetadata": {"annotations": {"kwok.modelsmith.io/run-duration": "12s"}},
            "output": {"uri": "/data/shards"},
        },
    )
    wait_for(
        lambda: _status(namespace, "DataPipeline", "busy").get("phase") == "Running",
        what="Running",
    )
    config_before = (
        client.CoreV1Api().read_namespaced_config_map("busy-task", namespace).data["task.json"]
    )
    client.CustomObjectsApi().patch_namespaced_custom_object(
        *GROUP_ARGS,
        namespace,
        "datapipelines",
        "busy",
        {"spec": {"env": [{"name": "EXTRA", "value": "1"}]}},
    )
    degraded = wait_for(
        lambda: _conditions(namespace, "DataPipeline", "busy").get("Degraded"),
        what="a Degraded condition",
    )
    assert (degraded["status"], degraded["reason"]) == ("True", "SpecChangeRejected")
    assert "field is immutable" in degraded["message"]
    obj = _get(namespace, "DataPipeline", "busy")
    assert obj["status"]["observedGeneration"] < obj["metadata"]["generation"]
    config_after = (
        client.CoreV1Api().read_namespaced_config_map("busy-task", namespace).data["task.json"]
    )
    assert config_after == config_before, "the running pods' config must not change"
    wait_for(
        lambda: _status(namespace, "DataPipeline", "busy").get("phase") == "Succeeded",
        timeout=90,
        what="the run to finish with its original spec",
    )


def _token(namespace: str, pod: client.V1Pod, audience: str, kubeconfig: Any) -> str:
    import subprocess

    from modelsmith.devcluster import tools

    kubectl = str(tools.binary(tools.KUBERNETES, "kubectl"))
    proc = subprocess.run(
        [
            kubectl,
            f"--kubeconfig={kubeconfig}",
            "create",
            "token",
            "default",
            "-n",
            namespace,
            f"--audience={audience}",
            "--bound-object-kind=Pod",
            f"--bound-object-name={pod.metadata.name}",
            f"--bound-object-uid={pod.metadata.uid}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def test_a_running_pod_reports_progress_with_its_own_token(
    operator: KopfRunner, namespace: str, kubeconfig: Any
) -> None:
    import os

    import httpx

    _create(
        namespace,
        "PretrainJob",
        "chatty",
        _pretrain({"kwok.modelsmith.io/run-duration": "30s"}),
    )
    wait_for(
        lambda: _status(namespace, "PretrainJob", "chatty").get("phase") == "Running",
        what="Running",
    )
    pod = _pods(namespace, "chatty-run")[0]
    volumes = {v.name: v for v in pod.spec.volumes}
    token_source = volumes["status-token"].projected.sources[0].service_account_token
    assert token_source.audience == "modelsmith.io/status"
    url = os.environ["MODELSMITH_STATUS_URL"] + "/v1/progress"

    def post(token: str | None, body: object) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(url, json=body, headers=headers, timeout=10).status_code

    good = _token(namespace, pod, "modelsmith.io/status", kubeconfig)
    assert post(None, {"step": 1}) == 401
    assert post(_token(namespace, pod, "someone-else", kubeconfig), {"step": 1}) == 401
    assert post(good, {"step": -1}) == 400
    assert post(good, {"step": 40, "total": 100}) == 204
    progress = _status(namespace, "PretrainJob", "chatty")["progress"]
    assert (progress["step"], progress["total"]) == (40, 100)
    assert progress["etaSeconds"] >= 0

    client.CoreV1Api().create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="stranger"),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="x")],
                tolerations=[client.V1Toleration(operator="Exists")],
            ),
        ),
    )
    stranger = client.CoreV1Api().read_namespaced_pod("stranger", namespace)
    assert (
        post(_token(namespace, stranger, "modelsmith.io/status", kubeconfig), {"step": 99}) == 403
    )
    assert _status(namespace, "PretrainJob", "chatty")["progress"]["step"] == 40

    # Give the 8-GPU node back now, not when the namespace goes: later tests place
    # 2 x 8-GPU runs and need both GPU nodes free.
    client.CustomObjectsApi().delete_namespaced_custom_object(
        *GROUP_ARGS, namespace, "pretrainjobs", "chatty", propagation_policy="Foreground"
    )
    wait_for(lambda: not _pods(namespace, "chatty-run"), what="the run's pods to be gone")
