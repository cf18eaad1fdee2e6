"""Turn what a batch Job reports into a modelsmith status: pure, so tables test it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelsmith.api.common import BatchStatus, CheckpointStatus, Outputs, Phase, Progress
from modelsmith.api.meta import ConditionStatus
from modelsmith.conditions import ConditionType, Reason, set_condition
from modelsmith.contract import ErrorInfo, Result, parse_result

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _parse_time(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None


def _outputs(output_uri: str, result: Result | None) -> Outputs:
    """The workload's own word (its termination message) wins over what we asked for."""
    if result is None:
        return Outputs(uri=output_uri)
    return Outputs(
        uri=result.uri or output_uri,
        digest=result.digest,
        size_bytes=result.size_bytes,
        metrics=result.metrics,
        version=result.version,
    )


def _running_message(active: int, restarts: int | None, ckpt: CheckpointStatus | None) -> str:
    message = f"{active} worker(s) running" if active else "waiting for pods"
    if restarts:
        message += f"; {restarts} worker failure(s) retried"
        if ckpt:
            message += f", resuming from {ckpt.uri}"
    return message


def _finished_message(outputs: Outputs) -> str:
    """ "Published" only on the workload's word (a digest in its result). A worker 0 that
    exited 0 without one, or whose message was lost, may have published nothing: say
    what is known, and let the artifact's own marker decide whether it exists."""
    if outputs.digest:
        return f"output published to {outputs.uri}"
    return f"all workers finished, but none reported a published artifact at {outputs.uri}"


@dataclass(frozen=True)
class PodReport:
    """What the Job's finished pods said in their termination messages."""

    result: Result | None = None
    """Worker 0's message once it succeeded: the run's published artifact."""
    checkpoint: CheckpointStatus | None = None
    """The newest checkpoint any finished pod reported."""
    failure: ErrorInfo | None = None
    """Why the most recent failed pod failed, in the workload's own words."""
    progress: Progress | None = None
    stuck: str | None = None
    """Why a pod cannot start, in the kubelet's words (a missing Secret key, an image
    that cannot be pulled): the run waits on the user, not on the scheduler."""


STUCK_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
    }
)
"""Waiting reasons that do not pass by themselves: the pod needs the user."""


def stuck_reason(pod: dict[str, Any]) -> str | None:
    """``pod NAME cannot start: REASON: MESSAGE`` for a pod in one of those states."""
    status = pod.get("status", {}) or {}
    containers = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            name = pod.get("metadata", {}).get("name", "?")
            message = f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
            return f"pod {name} cannot start: {message}"
    return None


def crash_reason(pod: dict[str, Any]) -> str | None:
    """``pod NAME: container C exited CODE (N restarts): WHY`` for a container that
    started and failed, WHY from its termination message (our images write their error
    there) or the kubelet's reason: what a long-running pod's "not ready" hides."""
    for container in (pod.get("status", {}) or {}).get("containerStatuses") or []:
        last = (container.get("lastState") or {}).get("terminated") or {}
        now = (container.get("state") or {}).get("terminated") or {}
        ended = now or last
        if not ended or int(ended.get("exitCode", 0) or 0) == 0:
            continue
        result = parse_result(ended.get("message"))
        if result is not None and result.error is not None:
            why = f"{result.error.reason}: {result.error.message}"
        else:
            why = str(ended.get("reason") or "Error")
        name = pod.get("metadata", {}).get("name", "?")
        restarts = int(container.get("restartCount", 0) or 0)
        return (
            f"pod {name}: container {container.get('name', '?')} exited "
            f"{ended.get('exitCode')} ({restarts} restarts): {why}"
        )
    return None


def _terminated(pod: dict[str, Any]) -> tuple[str, Result | None]:
    for status in pod.get("status", {}).get("containerStatuses", []) or []:
        terminated = status.get("state", {}).get("terminated")
        if terminated:
            return str(terminated.get("finishedAt") or ""), parse_result(terminated.get("message"))
    return "", None


def summarize_pods(pods: list[dict[str, Any]]) -> PodReport:
    """Fold the termination messages of a Job's pods, oldest first, into one report."""
    finished = []
    for pod in pods:
        when, result = _terminated(pod)
        if result is not None:
            finished.append((when, pod, result))
    finished.sort(key=lambda item: item[0])
    published: Result | None = None
    checkpoint: CheckpointStatus | None = None
    failure: ErrorInfo | None = None
    progress: Progress | None = None
    for _when, pod, result in finished:
        phase = pod.get("status", {}).get("phase")
        annotations = pod.get("metadata", {}).get("annotations", {}) or {}
        if phase == "Succeeded" and annotations.get(COMPLETION_INDEX) == "0":
            published = result
        if result.checkpoint is not None:
            checkpoint = CheckpointStatus(uri=result.checkpoint.uri, step=result.checkpoint.step)
        if phase == "Failed" and result.error is not None:
            failure = result.error
        if result.progress is not None:
            progress = Progress(step=result.progress.step, total=result.progress.total)
    stuck = next((why for why in map(stuck_reason, pods) if why), None)
    return PodReport(published, checkpoint, failure, progress, stuck)


def waiting_status(
    current: BatchStatus, *, generation: int, now: datetime, reason: Reason, message: str
) -> BatchStatus:
    """Before any child exists: inputs missing, still being produced, or failed."""
    failed = reason == Reason.UPSTREAM_FAILED
    conds = list(current.conditions)
    for type_, status in (
        (ConditionType.READY, F),
        (ConditionType.PROGRESSING, F if failed else T),
        (ConditionType.FAILED, T if failed else F),
    ):
        conds = set_condition(
            conds, type_, status, reason=reason, message=message, now=now, generation=generation
        )
    phase = Phase.FAILED if failed else Phase.PENDING
    return current.model_copy(
        update={"observed_generation": generation, "phase": phase, "conditions": conds}
    )


def blocked_status(
    current: BatchStatus, *, generation: int, now: datetime, reason: Reason, message: str
) -> BatchStatus:
    """No Job, because of something the user must fix (a claim, a Secret, the store):
    Pending, not Failed, since the run starts by itself once it is fixed; and not
    Progressing, since nothing moves until then."""
    conds = list(current.conditions)
    for type_, status in (
        (ConditionType.READY, F),
        (ConditionType.PROGRESSING, F),
        (ConditionType.FAILED, F),
    ):
        conds = set_condition(
            conds, type_, status, reason=reason, message=message, now=now, generation=generation
        )
    return current.model_copy(
        update={"observed_generation": generation, "phase": Phase.PENDING, "conditions": conds}
    )


def compute_status(
    current: BatchStatus,
    job: dict[str, Any] | None,
    *,
    generation: int,
    output_uri: str,
    now: datetime,
    pods: PodReport | None = None,
) -> BatchStatus:
    """The status a batch resource should have, given its Job as it is now."""
    conds = list(current.conditions)

    def put(type_: ConditionType, status: ConditionStatus, reason: Reason, message: str) -> None:
        nonlocal conds
        conds = set_condition(
            conds, type_, status, reason=reason, message=message, now=now, generation=generation
        )

    job_status: dict[str, Any] = (job or {}).get("status", {}) or {}
    complete = _job_condition(job or {}, "Complete")
    failed = _job_condition(job or {}, "Failed")
    suspended = bool((job or {}).get("spec", {}).get("suspend"))
    report = pods or PodReport()
    outputs = current.outputs
    completion_time = current.completion_time
    restarts = int(job_status.get("failed", 0) or 0) or current.restarts

    if complete:
        phase = Phase.SUCCEEDED
        put(ConditionType.SUCCEEDED, T, Reason.COMPLETED, "all workers finished")
        outputs = _outputs(output_uri, report.result)
        if outputs.digest:
            put(ConditionType.READY, T, Reason.COMPLETED, f"output published to {outputs.uri}")
        else:
            # Worker 0 exited 0 without a result (or its message was lost): say only
            # what is known; the artifact's own marker decides whether it exists.
            message = (
                f"all workers finished, but none reported a published artifact at {outputs.uri}"
            )
            put(ConditionType.READY, T, Reason.COMPLETED, message)
        put(ConditionType.PROGRESSING, F, Reason.COMPLETED, "")
        completion_time = _parse_time(job_status.get("completionTime")) or now
    elif failed:
        phase = Phase.FAILED
        message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        if report.failure is not None:
            message += f"; last worker error {report.failure.reason}: {report.failure.message}"
        put(ConditionType.FAILED, T, Reason.JOB_FAILED, message)
        put(ConditionType.READY, F, Reason.JOB_FAILED, message)
        put(ConditionType.PROGRESSING, F, Reason.JOB_FAILED, "")
        completion_time = completion_time or now
    elif suspended:
        phase = Phase.PENDING
        put(ConditionType.SUSPENDED, T, Reason.SUSPENDED, "spec.suspend is true")
        put(ConditionType.READY, F, Reason.SUSPENDED, "suspended")
        put(ConditionType.PROGRESSING, F, Reason.SUSPENDED, "")
    else:
        active = int(job_status.get("active", 0) or 0)
        phase = Phase.RUNNING if active else Phase.PENDING
        reason = Reason.RUNNING if active else Reason.JOB_CREATED
        put(ConditionType.SUSPENDED, F, reason, "")
        ckpt = report.checkpoint or current.last_checkpoint
        if report.stuck:
            put(ConditionType.READY, F, Reason.POD_CANNOT_START, report.stuck)
        else:
            put(ConditionType.READY, F, reason, _running_message(active, restarts, ckpt))
        put(
            ConditionType.PROGRESSING,
            T,
            reason,
            f"{job_status.get('succeeded', 0) or 0} worker(s) done",
        )

    return current.model_copy(
        update={
            "observed_generation": generation,
            "phase": phase,
            "conditions": conds,
            "start_time": current.start_time or _parse_time(job_status.get("startTime")),
            "completion_time": completion_time,
            "outputs": outputs,
            "restarts": restarts,
            "last_checkpoint": report.checkpoint or current.last_checkpoint,
            "progress": report.progress or current.progress,
        }
    )


def with_eta(step: int, total: int | None, started: datetime | None, now: datetime) -> Progress:
    """Progress plus a linear ETA from the time the run has taken so far (as Kubeflow
    Trainer's estimatedRemainingSeconds): good enough after warm-up, absent before any
    step is done."""
    eta = None
    if total and started and 0 < step <= total:
        elapsed = (now - started).total_seconds()
        eta = max(0, round(elapsed / step * (total - step)))
    return Progress(step=step, total=total, eta_seconds=eta)
