"""metav1.Condition bookkeeping: a condition's clock moves only when its status flips."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from modelsmith.api.meta import Condition, ConditionStatus


class Reason(StrEnum):
    INVALID_SPEC = "InvalidSpec"
    JOB_CREATED = "JobCreated"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    COMPLETED = "Completed"
    JOB_FAILED = "JobFailed"
    WAITING_FOR_INPUT = "WaitingForInput"
    UPSTREAM_NOT_FOUND = "UpstreamNotFound"
    UPSTREAM_FAILED = "UpstreamFailed"
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"
    SPEC_APPLIED = "SpecApplied"
    SERVING = "Serving"
    REVISION_NOT_READY = "RevisionNotReady"
    REVISION_FAILING = "RevisionFailing"
    CANARY_PROGRESSING = "CanaryProgressing"
    ROLLOUT_DONE = "RolloutDone"
    ROLLED_BACK = "RolledBack"
    PROMOTED = "Promoted"
    STORAGE_NOT_CONFIGURED = "StorageNotConfigured"
    CLAIM_NOT_FOUND = "ClaimNotFound"
    CLAIM_ACCESS_MODE = "ClaimAccessModeConflict"
    POD_CANNOT_START = "PodCannotStart"
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a reason, not a secret)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    *,
    reason: Reason,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` set; keep lastTransitionTime unless status flips."""
    previous = next((c for c in conditions if c.type == type_), None)
    when = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=when,
        observed_generation=generation,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
