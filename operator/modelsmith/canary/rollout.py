"""Which revisions serve, with what weights, and what status says: pure, from the spec's
revision, the status kept so far, readiness and the analysis' samples.

`decision.decide` moves one canary; this module is the bookkeeping around it that the
handler would otherwise mix with I/O: a new revision starts a rollout (superseding an
unfinished one), a promotion makes the canary stable, a spec reverted mid-rollout rolls
back, a spec without a canary replaces the revision as soon as the new one is ready, and
the stable revision is never dropped before its successor is ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from modelsmith.api.canary import CanaryEvent, CanaryStage, CanaryStatus, Decision
from modelsmith.api.inference import InferenceServiceSpec, InferenceServiceStatus, ServingPhase
from modelsmith.api.meta import ConditionStatus
from modelsmith.canary.decision import TERMINAL, Observation, Policy, Step, decide, start
from modelsmith.conditions import ConditionType, Reason, set_condition
from modelsmith.routes import Split

HISTORY = 10
"""History entries kept in status: enough to read a rollout, small enough for etcd."""
REPLACE_DEADLINE = timedelta(minutes=10)
"""Without a canary spec, how long a new revision may take to become ready."""


@dataclass(frozen=True)
class Inputs:
    spec: InferenceServiceSpec
    revision: str
    """The revision the spec describes now."""
    model_uri: str
    ready: Mapping[str, bool]
    """Revision -> all its replicas available."""
    samples: Mapping[str, float | None] | None
    """The canary's check values, when an analysis is due; None: Prometheus unreachable."""
    queries: Mapping[str, str]
    """Check name -> PromQL as sent, for status."""
    decision: Decision
    now: datetime
    generation: int
    failing: Mapping[str, str] = field(default_factory=dict)
    """Revision -> why its pods fail (a crash, an image that cannot be pulled): what
    Ready says instead of "not ready yet" while nothing serves."""
    model_version: str | None = None
    """The version the model's producer published it as (its status.outputs.version)."""
    policy: Policy | None = field(default=None)
    """The spec's canary policy, built once per reconcile by whoever made these inputs
    (the same one its analysis used); left out, it is built here from ``spec``."""

    def __post_init__(self) -> None:
        if self.policy is None and self.spec.canary is not None:
            object.__setattr__(self, "policy", Policy.from_spec(self.spec.canary))


@dataclass
class Plan:
    status: InferenceServiceStatus
    split: Split
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) for the resource's Events."""
    scaled_down: str | None = None
    """A rolled-back canary: its Deployment stays, at zero replicas, for inspection."""

    @property
    def live(self) -> list[str]:
        return [*self.split.revisions, *([self.scaled_down] if self.scaled_down else [])]


def _record(previous: CanaryStatus, step: Step, now: datetime) -> CanaryStatus:
    """The decided status, with the decision in the rollout's short history."""
    if not step.event:
        return step.state
    entry = CanaryEvent(time=now, reason=step.reason, message=step.event, weight=step.state.weight)
    return step.state.model_copy(update={"history": [*previous.history, entry][-HISTORY:]})


def _start(inputs: Inputs, superseded: CanaryStatus | None) -> tuple[CanaryStatus, str]:
    now = inputs.now
    how = "canary" if inputs.policy else "replacement (no canary spec)"
    message = f"new revision {inputs.revision} starts as {how}"
    if superseded is not None and superseded.stage not in TERMINAL:
        message += f"; unfinished rollout of {superseded.revision} superseded"
    status = start(inputs.policy, inputs.revision, now).model_copy(
        update={
            "history": [CanaryEvent(time=now, reason="CanaryStarted", message=message, weight=0)]
        }
    )
    return status, message


def _ended(canary: CanaryStatus, stage: CanaryStage, now: datetime, message: str) -> CanaryStatus:
    """A rollout over without analysis: no step, no counts, no last analysis kept."""
    update = {
        "stage": stage,
        "step": 0,
        "weight": 100 if stage == CanaryStage.PROMOTED else 0,
        "failures": 0,
        "inconclusive": 0,
        "step_started": now,
        "last_analysis": None,
        "message": message,
    }
    return canary.model_copy(update=update)


def _replace(inputs: Inputs, canary: CanaryStatus) -> Step:
    """No canary spec: all traffic moves the moment the new revision is ready."""
    if inputs.ready.get(canary.revision):
        message = "new revision ready: replaced (no canary spec)"
        promoted = _ended(canary, CanaryStage.PROMOTED, inputs.now, message)
        return Step(promoted, event=message, reason="Promoted")
    if inputs.now - canary.step_started >= REPLACE_DEADLINE:
        message = f"the new revision was not ready within {REPLACE_DEADLINE}: rolled back"
        rolled_back = _ended(canary, CanaryStage.ROLLED_BACK, inputs.now, message)
        return Step(rolled_back, event=message, reason="ProgressDeadlineExceeded")
    return Step(canary)


def _advance_canary(inputs: Inputs, canary: CanaryStatus) -> Step:
    if inputs.policy is None:
        return _replace(inputs, canary)
    seen = Observation(
        canary_ready=bool(inputs.ready.get(canary.revision)),
        samples=inputs.samples,
        decision=inputs.decision,
        queries=inputs.queries,
    )
    return decide(inputs.policy, canary, seen, inputs.now)


def plan(inputs: Inputs, current: InferenceServiceStatus) -> Plan:
    stable = current.stable_revision or inputs.revision
    model_uri = current.model_uri if current.stable_revision else inputs.model_uri
    # The spec's model is the stable one's: its producer's word now; otherwise the
    # version recorded when the stable revision was promoted.
    version = inputs.model_version if stable == inputs.revision else current.stable_version
    canary = current.canary
    events: list[tuple[str, str, str]] = []
    if inputs.revision != stable and (canary is None or canary.revision != inputs.revision):
        canary, message = _start(inputs, canary)
        events.append(("Normal", "CanaryStarted", message))
    elif (
        inputs.revision == stable
        and canary is not None
        and canary.revision != stable
        and canary.stage not in TERMINAL
    ):
        message = f"spec reverted to {stable}: rollout of {canary.revision} rolled back"
        update = {
            "stage": CanaryStage.ROLLED_BACK,
            "weight": 0,
            "inconclusive": 0,
            "step_started": inputs.now,
            "last_analysis": None,
            "message": message,
        }
        step = Step(canary.model_copy(update=update), event=message, reason="SpecReverted")
        canary = _record(canary, step, inputs.now)
        events.append(("Warning", "SpecReverted", message))
    if canary is not None and canary.stage not in TERMINAL and canary.revision != stable:
        step = _advance_canary(inputs, canary)
        canary = _record(canary, step, inputs.now)
        if step.event:
            kind = (
                "Warning"
                if canary.stage in (CanaryStage.ROLLED_BACK, CanaryStage.PAUSED)
                else "Normal"
            )
            events.append((kind, step.reason or str(canary.stage), step.event))
        if canary.stage == CanaryStage.PROMOTED:
            stable, model_uri, version = canary.revision, inputs.model_uri, inputs.model_version
    active = canary is not None and canary.stage not in TERMINAL and canary.revision != stable
    split = Split(stable)
    if active and canary is not None:
        mirror = inputs.policy.mirror_percent if inputs.policy else 0
        shadow = canary.stage == CanaryStage.SHADOW
        split = Split(stable, canary.revision, canary.weight, mirror if shadow else 0)
    rolled_back = (
        canary is not None
        and canary.stage == CanaryStage.ROLLED_BACK
        and canary.revision == inputs.revision
    )
    status = _conditions(
        inputs,
        current.model_copy(
            update={
                "stable_revision": stable,
                "model_uri": model_uri,
                "canary": canary,
                "canary_revision": canary.revision if active and canary else None,
                "stable_version": version,
                "canary_version": inputs.model_version if active else None,
                "canary_weight": split.weight if active else None,
                "observed_generation": inputs.generation,
            }
        ),
        active,
    )
    scaled_down = canary.revision if rolled_back and canary else None
    return Plan(status, split, events, scaled_down)


def _conditions(
    inputs: Inputs, status: InferenceServiceStatus, active: bool
) -> InferenceServiceStatus:
    conds = list(status.conditions)
    now, gen = inputs.now, inputs.generation
    stable = status.stable_revision or ""
    canary = status.canary
    serving = bool(inputs.ready.get(stable))

    def put(type_: ConditionType, ok: bool, reason: Reason, message: str) -> None:
        nonlocal conds
        state = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        conds = set_condition(
            conds, type_, state, reason=reason, message=message, now=now, generation=gen
        )

    weight = 100 - (status.canary_weight or 0)
    if serving:
        put(
            ConditionType.READY,
            True,
            Reason.SERVING,
            f"revision {stable} serves {weight}% of traffic",
        )
    elif stable in inputs.failing:
        why = inputs.failing[stable]
        put(
            ConditionType.READY,
            False,
            Reason.REVISION_FAILING,
            f"revision {stable} is failing: {why}",
        )
    else:
        put(
            ConditionType.READY,
            False,
            Reason.REVISION_NOT_READY,
            f"revision {stable} is not ready yet",
        )
    if active and canary is not None:
        put(ConditionType.PROGRESSING, True, Reason.CANARY_PROGRESSING, canary.message)
    else:
        put(ConditionType.PROGRESSING, False, Reason.ROLLOUT_DONE, canary.message if canary else "")
    if canary is not None and canary.stage == CanaryStage.ROLLED_BACK:
        put(ConditionType.ROLLED_BACK, True, Reason.ROLLED_BACK, canary.message)
    elif canary is not None and canary.stage == CanaryStage.PROMOTED:
        put(ConditionType.ROLLED_BACK, False, Reason.PROMOTED, canary.message)
    if not serving:
        phase = ServingPhase.PENDING
    elif active:
        phase = ServingPhase.PROGRESSING
    elif canary is not None and canary.stage == CanaryStage.ROLLED_BACK:
        phase = ServingPhase.DEGRADED
    else:
        phase = ServingPhase.READY
    return status.model_copy(update={"conditions": conds, "phase": phase})


RESYNC_S = 5.0
"""An active rollout is reconciled at least this often, events or not: a missed
readiness event then delays a step by seconds, not until the next analysis."""


def next_wake(status: InferenceServiceStatus, policy: Policy | None, now: datetime) -> float | None:
    """Seconds until this rollout needs a reconcile that no event will bring; None: never.
    ``policy``: the spec's (``Policy.of``); None: no canary spec."""
    canary = status.canary
    if canary is None or status.canary_revision is None:
        return None
    if policy is None:
        return RESYNC_S
    due = (canary.last_analysis or canary.step_started) + policy.every
    return min(max((due - now).total_seconds(), 0.5), RESYNC_S)
