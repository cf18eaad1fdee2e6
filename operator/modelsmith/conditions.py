"""metav1.Condition bookkeeping: a condition's clock moves only when its status flips."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from modelsmith.api.meta import Condition, ConditionStatus


class ConditionType(StrEnum):
    """The condition types this operator writes (`kubectl wait --for=condition=TYPE`)."""

    READY = "Ready"  # the resource does its job now: its output is published, or it serves
    PROGRESSING = "Progressing"  # work is under way: a run, or a rollout between revisions
    SUCCEEDED = "Succeeded"  # a batch run finished and published its output
    FAILED = "Failed"  # a batch run ended without output, or will never start
    SUSPENDED = "Suspended"  # spec.suspend holds the run's pods at zero
    DEGRADED = "Degraded"  # a spec change was refused; the run goes on with the old spec
    ROLLED_BACK = "RolledBack"  # the latest canary was rolled back (False: promoted)


class Reason(StrEnum):
    """Why a condition is as it is: one CamelCase word, the same in events."""

    INVALID_SPEC = "InvalidSpec"  # the spec (or name) breaks a rule; nothing is created
    JOB_CREATED = "JobCreated"  # the Job exists; none of its pods is running yet
    RUNNING = "Running"  # the Job's pods are running
    SUSPENDED = "Suspended"  # spec.suspend is true
    COMPLETED = "Completed"  # every worker finished
    JOB_FAILED = "JobFailed"  # the Job failed; the message says which pod and why
    WAITING_FOR_INPUT = "WaitingForInput"  # a fromRef upstream has not succeeded yet
    UPSTREAM_NOT_FOUND = "UpstreamNotFound"  # a fromRef names no resource
    UPSTREAM_FAILED = "UpstreamFailed"  # a fromRef upstream failed: no input will come
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"  # the API server refused the changed Job
    SPEC_APPLIED = "SpecApplied"  # the refused change was reverted or went through
    SERVING = "Serving"  # the stable revision is available
    REVISION_NOT_READY = "RevisionNotReady"  # the stable revision's pods are starting
    REVISION_FAILING = "RevisionFailing"  # the stable revision's pods crash or cannot start
    CANARY_PROGRESSING = "CanaryProgressing"  # a canary is between its steps
    ROLLOUT_DONE = "RolloutDone"  # no canary is in progress
    ROLLED_BACK = "RolledBack"  # analysis (or an Abort) took the canary's weight to 0
    PROMOTED = "Promoted"  # the canary passed every step and is stable now
    STORAGE_NOT_CONFIGURED = "StorageNotConfigured"  # no output.uri and no default store
    CLAIM_NOT_FOUND = "ClaimNotFound"  # a pvc:// claim does not exist in the namespace
    CLAIM_ACCESS_MODE = "ClaimAccessModeConflict"  # the claim's modes: pods cannot share it
    POD_CANNOT_START = "PodCannotStart"  # an image pull or container config error
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a reason, not a secret): storage keys


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
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


def get_condition(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
