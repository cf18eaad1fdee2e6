from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelsmith.api.common import BatchStatus, Phase
from modelsmith.conditions import Reason
from modelsmith.jobstatus import (
    compute_status,
    crash_reason,
    summarize_pods,
    waiting_status,
    with_eta,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(
    *,
    active: int = 0,
    succeeded: int = 0,
    cond: str | None = None,
    suspend: bool = False,
    message: str = "",
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "active": active,
        "succeeded": succeeded,
        "startTime": "2026-01-01T00:00:00Z",
    }
    if cond:
        status["conditions"] = [
            {
                "type": cond,
                "status": "True",
                "reason": "BackoffLimitExceeded" if cond == "Failed" else "",
                "message": message,
            }
        ]
        if cond == "Complete":
            status["completionTime"] = "2026-01-01T00:05:00Z"
    return {"spec": {"suspend": suspend}, "status": status}


def _conds(status: BatchStatus) -> dict[str, str]:
    return {c.type: c.status.value for c in status.conditions}


@pytest.mark.parametrize(
    ("job", "phase", "ready", "extra"),
    [
        (None, Phase.PENDING, "False", {"Progressing": "True"}),
        (_job(active=2), Phase.RUNNING, "False", {"Progressing": "True"}),
        (_job(suspend=True), Phase.PENDING, "False", {"Suspended": "True"}),
        (_job(cond="Complete", succeeded=2), Phase.SUCCEEDED, "True", {"Succeeded": "True"}),
        (_job(cond="Failed", message="pod failed"), Phase.FAILED, "False", {"Failed": "True"}),
    ],
)
def test_phase_and_conditions_follow_the_job(
    job: dict[str, Any] | None, phase: Phase, ready: str, extra: dict[str, str]
) -> None:
    status = compute_status(BatchStatus(), job, generation=3, output_uri="/o", now=T0)
    assert status.phase == phase
    conds = _conds(status)
    assert conds["Ready"] == ready
    for key, value in extra.items():
        assert conds[key] == value
    assert status.observed_generation == 3
    assert all(c.observed_generation == 3 for c in status.conditions)


def test_success_publishes_outputs_and_completion_time() -> None:
    status = compute_status(
        BatchStatus(), _job(cond="Complete"), generation=1, output_uri="s3://o", now=T0
    )
    assert status.outputs is not None
    assert status.outputs.uri == "s3://o"
    assert status.completion_time == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    assert status.start_time == datetime(2026, 1, 1, tzinfo=UTC)


def test_failure_message_names_the_job_reason() -> None:
    status = compute_status(
        BatchStatus(),
        _job(cond="Failed", message="3 pods failed"),
        generation=1,
        output_uri="/o",
        now=T0,
    )
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert ready.message == "BackoffLimitExceeded: 3 pods failed"
    assert status.outputs is None


JOBS = st.sampled_from(
    [None, _job(), _job(active=1), _job(suspend=True), _job(cond="Complete"), _job(cond="Failed")]
)


@given(first=JOBS, second=JOBS, minutes=st.integers(min_value=1, max_value=10_000))
def test_transition_time_moves_only_when_a_condition_flips(
    first: dict[str, Any] | None, second: dict[str, Any] | None, minutes: int
) -> None:
    before = compute_status(BatchStatus(), first, generation=1, output_uri="/o", now=T0)
    later = T0 + timedelta(minutes=minutes)
    after = compute_status(before, second, generation=1, output_uri="/o", now=later)
    old = {c.type: c for c in before.conditions}
    for cond in after.conditions:
        prev = old.get(cond.type)
        expected = T0 if prev is not None and prev.status == cond.status else later
        assert cond.last_transition_time == expected, cond.type
    again = compute_status(after, second, generation=1, output_uri="/o", now=later + timedelta(1))
    assert again == after, "reconciling an unchanged world must not change the status"


def _pod(
    phase: str, message: object, *, index: str = "0", finished: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    text = message if isinstance(message, str) else json.dumps(message)
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": index}},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"state": {"terminated": {"message": text, "finishedAt": finished}}}
            ],
        },
    }


def test_termination_message_fills_outputs() -> None:
    result = {"uri": "/published", "digest": "sha256:1", "metrics": {"loss": 2.5, "bad": "x"}}
    report = summarize_pods([_pod("Succeeded", result)])
    status = compute_status(
        BatchStatus(), _job(cond="Complete"), generation=1, output_uri="/o", now=T0, pods=report
    )
    assert status.outputs is not None
    assert (status.outputs.uri, status.outputs.digest) == ("/published", "sha256:1")
    assert status.outputs.metrics == {"loss": 2.5}
    assert status.outputs.version is None


def test_the_version_is_the_one_the_workload_says_it_published() -> None:
    result = {"uri": "/published", "digest": "sha256:1", "version": "2.0.0-rc.1+exp.sha.5114f85"}
    report = summarize_pods([_pod("Succeeded", result)])
    status = compute_status(
        BatchStatus(), _job(cond="Complete"), generation=1, output_uri="/o", now=T0, pods=report
    )
    assert status.outputs is not None and status.outputs.version == "2.0.0-rc.1+exp.sha.5114f85"


def test_only_worker_zero_publishes_and_logs_are_not_results() -> None:
    pods = [
        _pod("Succeeded", {"uri": "/from-worker-1"}, index="1"),
        _pod("Succeeded", "Traceback (most recent call last): ...", index="0"),
    ]
    assert summarize_pods(pods).result is None


def test_retried_worker_keeps_the_newest_checkpoint_and_the_last_error() -> None:
    pods = [
        _pod(
            "Failed",
            {
                "checkpoint": {"uri": "/c/step-100", "step": 100},
                "error": {"reason": "NCCL", "message": "timeout"},
            },
            finished="2026-01-01T00:02:00Z",
        ),
        _pod(
            "Failed",
            {
                "checkpoint": {"uri": "/c/step-50", "step": 50},
                "error": {"reason": "OOM", "message": "killed"},
            },
            finished="2026-01-01T00:01:00Z",
        ),
    ]
    report = summarize_pods(pods)
    assert report.checkpoint is not None
    assert (report.checkpoint.uri, report.checkpoint.step) == ("/c/step-100", 100)
    assert report.failure is not None and report.failure.reason == "NCCL"
    job = _job(active=1)
    job["status"]["failed"] = 2
    status = compute_status(BatchStatus(), job, generation=1, output_uri="/o", now=T0, pods=report)
    assert status.restarts == 2
    assert status.last_checkpoint == report.checkpoint
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert "resuming from /c/step-100" in ready.message
    later = compute_status(status, job, generation=1, output_uri="/o", now=T0, pods=None)
    assert later.last_checkpoint == report.checkpoint, "a checkpoint is never forgotten"


def test_failed_run_names_the_workers_own_error() -> None:
    report = summarize_pods(
        [_pod("Failed", {"error": {"reason": "BadInput", "message": "no documents in corpus"}})]
    )
    status = compute_status(
        BatchStatus(), _job(cond="Failed"), generation=1, output_uri="/o", now=T0, pods=report
    )
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert "BadInput: no documents in corpus" in failed.message


@pytest.mark.parametrize(
    ("reason", "phase", "failed"),
    [
        (Reason.WAITING_FOR_INPUT, Phase.PENDING, "False"),
        (Reason.UPSTREAM_NOT_FOUND, Phase.PENDING, "False"),
        (Reason.UPSTREAM_FAILED, Phase.FAILED, "True"),
    ],
)
def test_waiting_status(reason: Reason, phase: Phase, failed: str) -> None:
    status = waiting_status(BatchStatus(), generation=2, now=T0, reason=reason, message="m")
    assert status.phase == phase
    conds = {c.type: c for c in status.conditions}
    assert conds["Ready"].status.value == "False"
    assert conds["Ready"].reason == reason
    assert conds["Failed"].status.value == failed


@pytest.mark.parametrize(
    ("step", "total", "eta"),
    [(25, 100, 300), (100, 100, 0), (0, 100, None), (10, None, None), (120, 100, None)],
)
def test_eta_is_linear_in_the_time_taken_so_far(
    step: int, total: int | None, eta: int | None
) -> None:
    progress = with_eta(step, total, T0, T0 + timedelta(seconds=100))
    assert (progress.step, progress.total, progress.eta_seconds) == (step, total, eta)


def _waiting_pod(reason: str, message: str, *, init: bool = False) -> dict[str, Any]:
    statuses = [{"name": "c", "state": {"waiting": {"reason": reason, "message": message}}}]
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": {"name": "corpus-run-0-x"}, "status": {"phase": "Pending", key: statuses}}


def test_a_pod_that_cannot_start_says_why_in_ready() -> None:
    missing_key = "couldn't find key AWS_SECRET_ACCESS_KEY in Secret ml/s3-keys"
    report = summarize_pods([_waiting_pod("CreateContainerConfigError", missing_key)])
    assert report.stuck == (
        f"pod corpus-run-0-x cannot start: CreateContainerConfigError: {missing_key}"
    )
    job = {"spec": {}, "status": {"active": 1, "ready": 0}}
    status = compute_status(
        BatchStatus(), job, generation=1, output_uri="s3://bkt/o", now=T0, pods=report
    )
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "PodCannotStart")
    assert missing_key in ready.message
    assert status.phase == "Running"


@pytest.mark.parametrize(
    ("reason", "stuck"),
    [("ContainerCreating", False), ("PodInitializing", False), ("ImagePullBackOff", True)],
)
def test_only_waits_that_need_the_user_count_as_stuck(reason: str, stuck: bool) -> None:
    report = summarize_pods([_waiting_pod(reason, "m", init=True)])
    assert (report.stuck is not None) == stuck


def test_published_is_said_only_when_a_worker_reported_the_artifact() -> None:
    job = {"spec": {}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    silent = compute_status(BatchStatus(), job, generation=1, output_uri="pvc://d/o", now=T0)
    ready = next(c for c in silent.conditions if c.type == "Ready")
    assert "published" not in ready.message.replace("reported a published", "")
    assert "none reported a published artifact at pvc://d/o" in ready.message
    pod = {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "finishedAt": "2026-01-01T00:05:00Z",
                            "message": '{"uri": "pvc://d/o-attempt-1", "digest": "sha256:ab"}',
                        }
                    }
                }
            ],
        },
    }
    report = summarize_pods([pod])
    done = compute_status(
        BatchStatus(), job, generation=1, output_uri="pvc://d/o", now=T0, pods=report
    )
    ready = next(c for c in done.conditions if c.type == "Ready")
    assert ready.message == "output published to pvc://d/o-attempt-1"
    assert done.outputs is not None and done.outputs.uri == "pvc://d/o-attempt-1"


def _crashing_pod(message: str | None, exit_code: int = 1) -> dict[str, Any]:
    """A server pod as the kubelet reported it in the first real run: restarted, in
    CrashLoopBackOff, its last exit in lastState."""
    terminated = {
        "exitCode": exit_code,
        "reason": "Error",
        **({"message": message} if message else {}),
    }
    status = {
        "name": "server",
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {"terminated": terminated},
    }
    return {"metadata": {"name": "chat-rev-x"}, "status": {"containerStatuses": [status]}}


def test_a_crashing_pod_says_its_own_error() -> None:
    message = json.dumps(
        {
            "metrics": {},
            "error": {"reason": "ModuleNotFoundError", "message": "No module named 'torchao'"},
        }
    )
    assert crash_reason(_crashing_pod(message)) == (
        "pod chat-rev-x: container server exited 1 (3 restarts): "
        "ModuleNotFoundError: No module named 'torchao'"
    )
    # Without our termination message (another image, OOM), the kubelet's reason.
    assert crash_reason(_crashing_pod(None, 137)) == (
        "pod chat-rev-x: container server exited 137 (3 restarts): Error"
    )


def test_a_clean_exit_or_a_running_container_is_no_crash() -> None:
    assert crash_reason(_crashing_pod(None, 0)) is None
    running = {"name": "server", "restartCount": 0, "state": {"running": {}}, "lastState": {}}
    assert crash_reason({"metadata": {}, "status": {"containerStatuses": [running]}}) is None
