"""Turn what a batch Job reports into a modelsmith status: pure, so tables test it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from modelsmith.api.common import BatchStatus, Outputs, Phase
from modelsmith.api.meta import ConditionStatus
from modelsmith.conditions import Reason, set_condition

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def _parse_time(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None


def _outputs(output_uri: str, result: dict[str, Any]) -> Outputs:
    """The workload's own word (its termination message) wins over what we asked for."""
    metrics = {
        k: float(v)
        for k, v in (result.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    uri = result.get("uri") if isinstance(result.get("uri"), str) else None
    digest = result.get("digest") if isinstance(result.get("digest"), str) else None
    return Outputs(uri=uri or output_uri, digest=digest, metrics=metrics)


def waiting_status(
    current: BatchStatus, *, generation: int, now: datetime, reason: Reason, message: str
) -> BatchStatus:
    """Before any child exists: inputs missing, still being produced, or failed."""
    failed = reason == Reason.UPSTREAM_FAILED
    conds = list(current.conditions)
    for type_, status in (
        ("Ready", F),
        ("Progressing", F if failed else T),
        ("Failed", T if failed else F),
    ):
        conds = set_condition(
            conds, type_, status, reason=reason, message=message, now=now, generation=generation
        )
    phase = Phase.FAILED if failed else Phase.PENDING
    return current.model_copy(
        update={"observed_generation": generation, "phase": phase, "conditions": conds}
    )


def compute_status(
    current: BatchStatus,
    job: dict[str, Any] | None,
    *,
    generation: int,
    output_uri: str,
    now: datetime,
    result: dict[str, Any] | None = None,
) -> BatchStatus:
    """The status a batch resource should have, given its Job as it is now."""
    conds = list(current.conditions)

    def put(type_: str, status: ConditionStatus, reason: Reason, message: str) -> None:
        nonlocal conds
        conds = set_condition(
            conds, type_, status, reason=reason, message=message, now=now, generation=generation
        )

    job_status: dict[str, Any] = (job or {}).get("status", {}) or {}
    complete = _job_condition(job or {}, "Complete")
    failed = _job_condition(job or {}, "Failed")
    suspended = bool((job or {}).get("spec", {}).get("suspend"))
    outputs = current.outputs
    completion_time = current.completion_time

    if complete:
        phase = Phase.SUCCEEDED
        put("Succeeded", T, Reason.COMPLETED, "all workers finished")
        put("Ready", T, Reason.COMPLETED, f"shards published to {output_uri}")
        put("Progressing", F, Reason.COMPLETED, "")
        outputs = _outputs(output_uri, result or {})
        completion_time = _parse_time(job_status.get("completionTime")) or now
    elif failed:
        phase = Phase.FAILED
        message = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
        put("Failed", T, Reason.JOB_FAILED, message)
        put("Ready", F, Reason.JOB_FAILED, message)
        put("Progressing", F, Reason.JOB_FAILED, "")
        completion_time = completion_time or now
    elif suspended:
        phase = Phase.PENDING
        put("Suspended", T, Reason.SUSPENDED, "spec.suspend is true")
        put("Ready", F, Reason.SUSPENDED, "suspended")
        put("Progressing", F, Reason.SUSPENDED, "")
    else:
        active = int(job_status.get("active", 0) or 0)
        phase = Phase.RUNNING if active else Phase.PENDING
        reason = Reason.RUNNING if active else Reason.JOB_CREATED
        put("Suspended", F, reason, "")
        put("Ready", F, reason, f"{active} worker(s) running" if active else "waiting for pods")
        put("Progressing", T, reason, f"{job_status.get('succeeded', 0) or 0} worker(s) done")

    return current.model_copy(
        update={
            "observed_generation": generation,
            "phase": phase,
            "conditions": conds,
            "start_time": current.start_time or _parse_time(job_status.get("startTime")),
            "completion_time": completion_time,
            "outputs": outputs,
        }
    )
