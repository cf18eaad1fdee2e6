"""The canary's next move: a pure function of (policy, state, observation, now).

Everything that decides whether a model revision gets more traffic, is promoted or is
rolled back lives here, with no I/O, so table and property tests pin it down and the
reconciler only gathers inputs (Prometheus samples, readiness, the override) and
carries out the result. The vocabulary is Flagger's and Argo Rollouts':

- Steps: explicit weights, or stepWeight up to maxWeight; a shadow step at weight 0
  first when mirrorPercent is set (the canary sees copies of requests, users see
  nothing of it).
- Every analysis interval (a fifth of the step interval unless set), one analysis:
  each check's value against its min/max. A step lasts at least one interval and
  moves on at the first passing analysis after that. Checking more often than the
  step length is what lets a bad canary go back to stable in a fraction of Flagger's
  interval x threshold, where one analysis per step is the only clock. An empty or
  NaN value counts as onEmpty says: fail, pass, or skip (inconclusive).
- More failed analyses than failureLimit: roll back (all traffic to stable). More
  inconclusive ones than inconclusiveLimit: pause. Prometheus unreachable: pause too;
  a rollout never moves on metrics it could not read.
- A step that cannot complete an analysis within the progress deadline (canary never
  ready, Prometheus away, paused) is rolled back: the safe direction is stable.
- All checks pass on the last step: promote (the canary takes 100% and becomes stable).
- A manual decision overrides analysis: Promote promotes now, Abort rolls back now.

Weights never exceed maxWeight before promotion, and a rollback always leaves 0% on
the canary: the property tests in tests/unit/test_canary.py check both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from modelsmith.api.canary import (
    BuiltinCheck,
    Canary,
    CanaryStatus,
    CheckStatus,
    Decision,
    MetricCheck,
    OnEmpty,
    parse_duration,
)
from modelsmith.api.canary import CanaryStage as Stage
from modelsmith.api.inference import InferenceServiceSpec

TERMINAL = frozenset({Stage.PROMOTED, Stage.ROLLED_BACK})


class Verdict(StrEnum):
    PASS = "Pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


BUILTIN_QUERIES = {
    BuiltinCheck.ERROR_RATE: (
        'sum(rate(modelsmith_router_requests_total{namespace="${namespace}",'
        'service="${service}",revision="${revision}",code=~"5.."}[${interval}])) / '
        'sum(rate(modelsmith_router_requests_total{namespace="${namespace}",'
        'service="${service}",revision="${revision}"}[${interval}]))'
    ),
    BuiltinCheck.LATENCY_P99: (
        "histogram_quantile(0.99, sum by (le) (rate("
        'modelsmith_router_request_duration_seconds_bucket{namespace="${namespace}",'
        'service="${service}",revision="${revision}"}[${interval}])))'
    ),
    BuiltinCheck.TIME_TO_FIRST_TOKEN_P99: (
        "histogram_quantile(0.99, sum by (le) (rate("
        'modelsmith_router_time_to_first_token_seconds_bucket{namespace="${namespace}",'
        'service="${service}",revision="${revision}"}[${interval}])))'
    ),
}
"""The built-in checks read the router's per-revision metrics: the router sees every
request whatever runtime serves it, so the same checks hold for builtin and vLLM."""


def resolve_query(check: MetricCheck, variables: Mapping[str, str]) -> str:
    """The PromQL that is sent, as status shows it: ${name} replaced by its value."""
    template = check.query if check.builtin is None else BUILTIN_QUERIES[check.builtin]
    text = template or ""
    for name, value in variables.items():
        text = text.replace("${" + name + "}", value)
    return text


@dataclass(frozen=True)
class Policy:
    """What the spec says, in the shape the decision needs."""

    weights: tuple[int, ...]
    """Canary weights of the steps with user traffic, ascending, each <= maxWeight."""
    max_weight: int
    interval: timedelta
    checks: tuple[MetricCheck, ...]
    failure_limit: int
    inconclusive_limit: int
    progress_deadline: timedelta
    mirror_percent: int = 0
    analysis_interval: timedelta | None = None
    """How often checks run; None: every interval."""

    @property
    def every(self) -> timedelta:
        return self.analysis_interval or self.interval

    @classmethod
    def of(cls, spec: InferenceServiceSpec) -> Policy | None:
        """The spec's canary policy; None: no canary (a new revision replaces the old)."""
        return cls.from_spec(spec.canary) if spec.canary is not None else None

    @classmethod
    def from_spec(cls, canary: Canary) -> Policy:
        if canary.steps:
            weights = tuple(canary.steps)  # each <= maxWeight, ascending: the model's rules
        else:
            step = canary.step_weight or canary.max_weight
            weights = tuple(range(step, canary.max_weight + 1, step))
        interval = parse_duration(canary.interval)
        every = parse_duration(canary.analysis_interval) if canary.analysis_interval else None
        return cls(
            weights=weights or (canary.max_weight,),
            max_weight=canary.max_weight,
            interval=interval,
            analysis_interval=every or interval / 5,  # never above interval: a rule
            checks=tuple(canary.metrics),
            failure_limit=canary.failure_limit,
            inconclusive_limit=canary.inconclusive_limit,
            progress_deadline=timedelta(seconds=canary.progress_deadline_seconds),
            mirror_percent=canary.mirror_percent,
        )


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float | None
    verdict: Verdict


def start(policy: Policy | None, revision: str, now: datetime) -> CanaryStatus:
    """A new revision: shadow first when mirroring, else weight 0 until it is ready."""
    if policy is not None and policy.mirror_percent:
        stage, step, message = Stage.SHADOW, -1, "shadow traffic only"
    else:
        stage, step = Stage.PROGRESSING, 0
        message = "waiting for the canary" if policy is not None else ""
    return CanaryStatus(
        revision=revision, stage=stage, step=step, weight=0, step_started=now, message=message
    )


@dataclass(frozen=True)
class Observation:
    canary_ready: bool
    samples: Mapping[str, float | None] | None
    """Each check's value by name (None: empty or NaN); None: Prometheus unreachable."""
    decision: Decision = Decision.AUTO
    queries: Mapping[str, str] = field(default_factory=dict)
    """Check name -> the PromQL the samples came from, as status shows it."""


@dataclass(frozen=True)
class Step:
    """The decision: the new state and, when something happened, why (for an Event)."""

    state: CanaryStatus
    event: str | None = None
    reason: str = ""
    checks: tuple[CheckResult, ...] = field(default=())

    @property
    def mirror(self) -> bool:
        return self.state.stage == Stage.SHADOW


def _judge(check: MetricCheck, value: float | None) -> Verdict:
    if value is None or math.isnan(value):
        return {
            OnEmpty.FAIL: Verdict.FAIL,
            OnEmpty.PASS: Verdict.PASS,
            OnEmpty.SKIP: Verdict.INCONCLUSIVE,
        }[check.on_empty]
    if check.min is not None and value < check.min:
        return Verdict.FAIL
    if check.max is not None and value > check.max:
        return Verdict.FAIL
    return Verdict.PASS


def analyse(policy: Policy, samples: Mapping[str, float | None]) -> tuple[CheckResult, ...]:
    return tuple(
        CheckResult(c.name, samples.get(c.name), _judge(c, samples.get(c.name)))
        for c in policy.checks
    )


def _describe(result: CheckResult, policy: Policy) -> str:
    check = next(c for c in policy.checks if c.name == result.name)
    bounds = " and ".join(
        f"{op} {bound:g}"
        for op, bound in (("min", check.min), ("max", check.max))
        if bound is not None
    )
    value = "no data" if result.value is None or math.isnan(result.value) else f"{result.value:g}"
    return f"{result.name} = {value} ({bounds})"


def _with(state: CanaryStatus, **update: object) -> CanaryStatus:
    """The canary's bookkeeping is its status: each decision is a copy of it with some
    fields changed, so nothing is copied field by field to and from a second shape."""
    return state.model_copy(update=update)


def _recorded(results: tuple[CheckResult, ...], queries: Mapping[str, str]) -> list[CheckStatus]:
    return [
        CheckStatus(
            name=r.name, query=queries.get(r.name, ""), value=r.value, verdict=str(r.verdict)
        )
        for r in results
    ]


def _roll_back(state: CanaryStatus, now: datetime, reason: str, message: str) -> Step:
    new = _with(state, stage=Stage.ROLLED_BACK, weight=0, step_started=now, message=message)
    return Step(new, event=message, reason=reason)


def _promote(state: CanaryStatus, now: datetime, reason: str, message: str) -> Step:
    new = _with(state, stage=Stage.PROMOTED, weight=100, step_started=now, message=message)
    return Step(new, event=message, reason=reason)


def _advance(
    policy: Policy, state: CanaryStatus, now: datetime, checks: list[CheckStatus]
) -> CanaryStatus:
    """The next step (or promotion after the last), having passed this analysis."""
    nxt = state.step + 1
    if nxt >= len(policy.weights):
        message = "all checks passed on the last step: promoted"
        stage, weight = Stage.PROMOTED, 100
    else:
        weight = policy.weights[nxt]
        message = f"step {nxt + 1}/{len(policy.weights)}: canary weight {weight}%"
        stage = Stage.PROGRESSING
    return _with(
        state,
        stage=stage,
        step=state.step if stage == Stage.PROMOTED else nxt,
        weight=weight,
        step_started=now,
        last_analysis=now,
        checks=checks,
        message=message,
    )


def decide(policy: Policy, state: CanaryStatus, seen: Observation, now: datetime) -> Step:
    """The next state of a canary rollout; see the module docstring for the rules."""
    if state.stage in TERMINAL:
        return Step(state)
    if seen.decision == Decision.ABORT:
        return _roll_back(state, now, "ManualAbort", "aborted by decision Abort: weight 0%")
    if seen.decision == Decision.PROMOTE:
        return _promote(state, now, "ManualPromote", "promoted by decision Promote")
    waiting = _before_analysis(policy, state, seen, now)
    if waiting is not None:
        return waiting
    if seen.samples is None:
        return _metrics_unavailable(policy, state, now)
    return _after_analysis(policy, state, analyse(policy, seen.samples), seen.queries, now)


def _stalled(policy: Policy, state: CanaryStatus, now: datetime) -> bool:
    """No analysis (or step) for the progress deadline."""
    since = max(state.last_analysis or state.step_started, state.step_started)
    return now - since >= policy.progress_deadline


def _before_analysis(
    policy: Policy, state: CanaryStatus, seen: Observation, now: datetime
) -> Step | None:
    """Everything that happens instead of an analysis this time; None: analyse."""
    if not seen.canary_ready:
        if _stalled(policy, state, now):
            message = f"the canary was not ready within {policy.progress_deadline}: rolled back"
            return _roll_back(state, now, "ProgressDeadlineExceeded", message)
        return Step(_with(state, message="waiting for the canary to be ready"))
    if state.stage == Stage.PROGRESSING and state.weight == 0 and state.step == 0:
        # Ready at last: the first step's weight goes out now; its analysis follows.
        first = policy.weights[0]
        new = _with(state, weight=first, step_started=now, message=f"canary weight {first}%")
        return Step(new, event=new.message, reason="StepAdvanced")
    if state.stage == Stage.PAUSED and state.inconclusive > policy.inconclusive_limit:
        return Step(state)  # as Argo Rollouts: an inconclusive rollout waits for a human
    if now - (state.last_analysis or state.step_started) < policy.every:
        return Step(state)
    return None


def _metrics_unavailable(policy: Policy, state: CanaryStatus, now: datetime) -> Step:
    if _stalled(policy, state, now):
        message = "Prometheus unreachable for the whole progress deadline: rolled back"
        return _roll_back(state, now, "ProgressDeadlineExceeded", message)
    paused = _with(state, stage=Stage.PAUSED, message="Prometheus unreachable: paused")
    event = paused.message if state.stage != Stage.PAUSED else None
    return Step(paused, event=event, reason="MetricsUnavailable")


def _after_analysis(
    policy: Policy,
    state: CanaryStatus,
    results: tuple[CheckResult, ...],
    queries: Mapping[str, str],
    now: datetime,
) -> Step:
    resumed = Stage.SHADOW if state.step < 0 else Stage.PROGRESSING
    analysed = _with(state, last_analysis=now, checks=_recorded(results, queries))
    failed = [r for r in results if r.verdict == Verdict.FAIL]
    if failed:
        failures = state.failures + 1
        why = "; ".join(_describe(r, policy) for r in failed)
        if failures > policy.failure_limit:
            message = f"rolled back after {failures} failed analyses: {why}"
            step = _roll_back(_with(analysed, failures=failures), now, "AnalysisFailed", message)
            return replace(step, checks=results)
        new = _with(
            analysed,
            stage=resumed,
            failures=failures,
            message=f"analysis failed ({failures}/{policy.failure_limit} tolerated): {why}",
        )
        return Step(new, event=new.message, reason="AnalysisFailed", checks=results)
    if any(r.verdict == Verdict.INCONCLUSIVE for r in results):
        inconclusive = state.inconclusive + 1
        over = inconclusive > policy.inconclusive_limit
        new = _with(
            analysed,
            stage=Stage.PAUSED if over else resumed,
            inconclusive=inconclusive,
            message=f"analysis inconclusive ({inconclusive}/{policy.inconclusive_limit})"
            + (": paused until decision Promote or Abort" if over else ""),
        )
        return Step(new, event=new.message, reason="AnalysisInconclusive", checks=results)
    if now - state.step_started < policy.interval:
        new = _with(
            analysed,
            stage=resumed,
            message=f"analysis passed; step {max(state.step, 0) + 1} lasts {policy.interval}",
        )
        return Step(new, checks=results)
    new = _advance(policy, _with(state, stage=resumed), now, analysed.checks)
    reason = "Promoted" if new.stage == Stage.PROMOTED else "StepAdvanced"
    return Step(new, event=new.message, reason=reason, checks=results)
