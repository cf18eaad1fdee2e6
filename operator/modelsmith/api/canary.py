"""The canary's API: its policy in the spec (Flagger's and Argo Rollouts' vocabulary:
steps or stepWeight/maxWeight, interval, metric checks with PromQL and thresholds,
failure limit, mirroring) and its decision state in the status, which
canary/decision.py reads and returns, so that state has one shape.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from modelsmith.api.common import cel
from modelsmith.api.meta import CamelModel

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Prometheus/Go style durations as the CRD pattern admits them: 1m, 30s, 1h30m."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))


def _longer_than_zero(text: str) -> str:
    if parse_duration(text) <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return text


Duration = Annotated[
    str,
    Field(
        pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$",
        max_length=64,
        # CEL's duration() reads Go's syntax, of which the pattern admits a subset.
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "duration(self) > duration('0s')", "message": "must be longer than 0s"}
            ]
        },
    ),
    AfterValidator(_longer_than_zero),
]


class OnEmpty(StrEnum):
    FAIL = "fail"
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    SKIP = "skip"


class BuiltinCheck(StrEnum):
    ERROR_RATE = "error-rate"
    LATENCY_P99 = "latency-p99"
    TIME_TO_FIRST_TOKEN_P99 = "time-to-first-token-p99"  # noqa: S105 (a check name)


class MetricCheck(CamelModel):
    """One PromQL query whose result must stay within bounds during analysis."""

    model_config = cel(
        (
            "has(self.min) || has(self.max)",
            "a metric check needs min, max or both",
            lambda s: s.min is not None or s.max is not None,
        ),
        (
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            "metric min exceeds max",
            lambda s: s.min is None or s.max is None or s.min <= s.max,
        ),
        (
            "has(self.query) != has(self.builtin)",
            "a metric check needs query or builtin, not both",
            lambda s: (s.query is None) != (s.builtin is None),
        ),
    )

    name: str = Field(min_length=1, max_length=63, description="Name shown in status.")
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "PromQL; ${revision}, ${namespace}, ${service} and ${interval} stand for the "
            "revision analysed, its namespace, the InferenceService and the interval."
        ),
    )
    builtin: BuiltinCheck | None = Field(
        default=None,
        description="error-rate (0..1), latency-p99 or time-to-first-token-p99 (seconds).",
    )
    min: float | None = Field(default=None, description="Fail below this value.")
    max: float | None = Field(default=None, description="Fail above this value.")
    on_empty: OnEmpty = Field(
        default=OnEmpty.FAIL, description="What an empty or NaN result counts as."
    )


class Decision(StrEnum):
    AUTO = "Auto"
    PROMOTE = "Promote"
    ABORT = "Abort"


class Canary(CamelModel):
    """Progressive delivery of a new model revision."""

    model_config = cel(
        (
            "has(self.steps) != has(self.stepWeight)",
            "canary: set steps or stepWeight, not both",
            lambda s: (s.steps is None) != (s.step_weight is None),
        ),
        (
            "!has(self.steps) || self.steps.isSorted()",
            "canary.steps must be ascending",
            lambda s: s.steps is None or list(s.steps) == sorted(s.steps),
        ),
        (
            "!has(self.steps) || self.steps.all(w, w <= self.maxWeight)",
            "canary.steps must not exceed maxWeight",
            lambda s: s.steps is None or all(w <= s.max_weight for w in s.steps),
        ),
        (
            "!has(self.stepWeight) || self.stepWeight <= self.maxWeight",
            "canary.stepWeight must not exceed maxWeight",
            lambda s: s.step_weight is None or s.step_weight <= s.max_weight,
        ),
        (
            "!has(self.analysisInterval) || "
            "duration(self.analysisInterval) <= duration(self.interval)",
            "canary.analysisInterval must not exceed interval",
            lambda s: (
                s.analysis_interval is None
                or parse_duration(s.analysis_interval) <= parse_duration(s.interval)
            ),
        ),
    )

    steps: list[Annotated[int, Field(ge=1, le=100)]] | None = Field(
        default=None, min_length=1, max_length=100, description="Canary weights, in percent."
    )
    step_weight: int | None = Field(
        default=None, ge=1, le=100, description="Weight added per step."
    )
    max_weight: int = Field(default=50, ge=1, le=100, description="Last weight before promotion.")
    interval: Duration = Field(
        default="1m", description="How long each step lasts before the next (e.g. 1m)."
    )
    analysis_interval: Duration | None = Field(
        default=None,
        description=(
            "How often the checks run within a step (Argo Rollouts' measurement "
            "interval). Default: a fifth of interval, so a breach is acted on long "
            "before the step ends."
        ),
    )
    metrics: list[MetricCheck] = Field(
        default_factory=list, max_length=32, description="Checks run every interval."
    )
    failure_limit: int = Field(
        default=2, ge=0, le=100, description="Failed analyses tolerated before rollback."
    )
    inconclusive_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Inconclusive analyses (onEmpty: skip) tolerated before the rollout pauses.",
    )
    progress_deadline_seconds: int = Field(
        default=600, ge=1, description="Roll back if a step makes no progress this long."
    )
    mirror_percent: int = Field(
        default=0, ge=0, le=100, description="Share of stable traffic mirrored to the canary."
    )
    decision: Decision = Field(
        default=Decision.AUTO,
        description="Auto lets the analysis decide; Promote or Abort overrides it.",
    )


class CanaryStage(StrEnum):
    SHADOW = "Shadow"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class CheckStatus(CamelModel):
    """One check's last analysis, with the query exactly as it was sent."""

    name: str = Field(description="The check's name.")
    query: str = Field(description="PromQL as resolved for this revision.")
    value: float | None = Field(default=None, description="Last value; unset: empty or NaN.")
    verdict: str = Field(description="Pass, Fail or Inconclusive.")


class CanaryEvent(CamelModel):
    """One entry of the rollout's short history."""

    time: datetime = Field(description="When it happened.")
    reason: str = Field(description="StepAdvanced, AnalysisFailed, Promoted, RolledBack…")
    message: str = Field(default="", description="What happened.")
    weight: int = Field(description="Canary weight after it.")


class CanaryStatus(CamelModel):
    """The rollout of one revision; kept after it ends, until the next one starts."""

    revision: str = Field(description="The revision under analysis.")
    stage: CanaryStage = Field(description="Shadow, Progressing, Paused, Promoted, RolledBack.")
    step: int = Field(description="Index of the current step; -1 is the shadow step.")
    weight: int = Field(description="Percent of user traffic sent to the canary.")
    failures: int = Field(default=0, description="Failed analyses so far.")
    inconclusive: int = Field(default=0, description="Inconclusive analyses so far.")
    step_started: datetime = Field(description="When the current step began.")
    last_analysis: datetime | None = Field(default=None, description="Last analysis.")
    message: str = Field(default="", description="Where the rollout stands, in words.")
    checks: list[CheckStatus] = Field(default_factory=list, description="Last analysis.")
    history: list[CanaryEvent] = Field(
        default_factory=list, description="The latest steps and decisions, oldest first."
    )
