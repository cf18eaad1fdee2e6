"""InferenceService: a served model whose new versions reach users through a canary.

The canary vocabulary is Flagger's and Argo Rollouts' (steps or stepWeight/maxWeight,
interval, metric checks with PromQL and thresholds, failure limit, mirroring), so
their users can read a spec at a glance. The operator's handlers/inference.py
reconciles it; canary/ decides each step.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from modelsmith.api.common import (
    FreeForm,
    Input,
    LabelValue,
    Name,
    Resources,
    Storage,
    cel,
    defaulted,
)
from modelsmith.api.meta import CamelModel, Condition, KindInfo, LongestChild

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


class Runtime(StrEnum):
    BUILTIN = "builtin"
    VLLM = "vllm"
    KSERVE = "kserve"


class AutoscalingMetric(StrEnum):
    CPU = "cpu"
    CONCURRENCY = "concurrency"


class Autoscaling(CamelModel):
    """Scale replicas on load."""

    model_config = cel(
        (
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed maxReplicas",
        )
    )

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    metric: AutoscalingMetric = Field(
        default=AutoscalingMetric.CONCURRENCY,
        description=(
            "cpu: CPU utilisation (metrics-server); concurrency: requests in flight per "
            "pod, a Prometheus metric served to the HPA by prometheus-adapter."
        ),
    )
    target_concurrency: int = Field(
        default=8, ge=1, le=100_000, description="In-flight requests per replica to aim for."
    )
    target_cpu_utilization: int = Field(
        default=70, ge=1, le=100, description="cpu: percent of the CPU request to aim for."
    )
    pods_metric: str = Field(
        default="vllm_num_requests_running",
        max_length=253,
        description=(
            "concurrency: the custom metric's name as prometheus-adapter serves it "
            "(from the servers' vllm:num_requests_running)."
        ),
    )


class SecretKey(CamelModel):
    """A key in a Secret of this namespace."""

    name: Name = Field(description="Secret name.")
    key: str = Field(default="api-key", max_length=253, description="Key within the Secret.")


class GatewayRef(CamelModel):
    """A Gateway API Gateway the HTTPRoute attaches to."""

    name: Name = Field(description="Gateway name.")
    namespace: Name | None = Field(default=None, description="Default: this namespace.")


class Limits(CamelModel):
    """Per-request and per-client bounds the server enforces."""

    max_tokens: int = Field(default=4096, ge=1, le=1_048_576, description="Max new tokens.")
    max_concurrent_requests: int = Field(
        default=64, ge=1, le=100_000, description="In-flight requests per replica."
    )
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Per API key; unset means unlimited."
    )
    max_prompt_tokens: int = Field(
        default=8192, ge=1, le=1_048_576, description="Longest prompt accepted, in tokens."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=104_857_600, description="Largest request body."
    )


class Batching(CamelModel):
    """How the built-in engine groups concurrent requests into one forward pass."""

    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Sequences decoded together at most."
    )
    max_wait_ms: int = Field(
        default=5,
        ge=0,
        le=10_000,
        description="How long an idle engine waits for more requests before it starts.",
    )


class OutputFilter(CamelModel):
    """Stop generation before the output says something it must not."""

    blocklist: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=1024,
        description=(
            "Case-insensitive phrases; output stops before one, with finish_reason content_filter."
        ),
    )


class Backend(StrEnum):
    ROUTER = "router"
    GATEWAY_API = "gateway-api"
    KSERVE = "kserve"


class Traffic(CamelModel):
    """How traffic is split between the stable and the canary revision."""

    model_config = cel(
        (
            "self.backend != 'gateway-api' || has(self.gatewayRef)",
            "traffic.gatewayRef is required for backend gateway-api",
        )
    )

    backend: Backend = Field(default=Backend.ROUTER, description="Who shifts the traffic.")
    gateway_ref: GatewayRef | None = Field(
        default=None, description="gateway-api: the Gateway the route attaches to."
    )


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
        ("has(self.min) || has(self.max)", "a metric check needs min, max or both"),
        ("!has(self.min) || !has(self.max) || self.min <= self.max", "metric min exceeds max"),
        ("has(self.query) != has(self.builtin)", "a metric check needs query or builtin, not both"),
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
        ("has(self.steps) != has(self.stepWeight)", "canary: set steps or stepWeight, not both"),
        ("!has(self.steps) || self.steps.isSorted()", "canary.steps must be ascending"),
        (
            "!has(self.steps) || self.steps.all(w, w <= self.maxWeight)",
            "canary.steps must not exceed maxWeight",
        ),
        (
            "!has(self.stepWeight) || self.stepWeight <= self.maxWeight",
            "canary.stepWeight must not exceed maxWeight",
        ),
        (
            "!has(self.analysisInterval) || "
            "duration(self.analysisInterval) <= duration(self.interval)",
            "canary.analysisInterval must not exceed interval",
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


class InferenceServiceSpec(CamelModel):
    """Desired state of an InferenceService."""

    model_config = cel(
        (
            "!has(self.canary) || self.traffic.backend == 'router' || "
            "self.canary.metrics.all(m, !has(m.builtin))",
            "canary builtin checks read the built-in router's metrics: with traffic.backend "
            "gateway-api or kserve, give each check a PromQL query instead",
        )
    )

    model: Input = Field(description="The model to serve; a change starts a canary.")
    runtime: Runtime = Field(default=Runtime.BUILTIN, description="builtin, vllm or kserve.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas without autoscaling.")
    autoscaling: Autoscaling | None = Field(default=None, description="Scale on load.")
    resources: Resources = defaulted(Resources, "Per replica.")
    api_key_secret: SecretKey | None = Field(
        default=None, description="Clients must send this key (Authorization: Bearer)."
    )
    limits: Limits = defaulted(Limits, "Request limits.")
    batching: Batching = defaulted(Batching, "Request batching (builtin runtime).")
    output_filter: OutputFilter | None = Field(
        default=None, description="Optional output filter (builtin runtime)."
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=253,
        description="The `model` clients name in OpenAI requests. Default: metadata.name.",
    )
    traffic: Traffic = defaulted(Traffic, "Traffic splitting.")
    canary: Canary | None = Field(
        default=None, description="Progressive delivery; unset replaces revisions at once."
    )
    image: str | None = Field(default=None, max_length=512, description="Override the image.")
    storage: Storage = defaulted(
        Storage,
        "How the servers reach the model: a pvc:// model is mounted read-only; an s3:// "
        "model is fetched by an init container into an emptyDir of scratchSize before the "
        "server starts, so readiness means loaded.",
    )
    service_account_name: Name | None = Field(
        default=None, description="ServiceAccount the servers run as (workload identity)."
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Node labels the server and router pods require (a GPU pool, say).",
    )
    tolerations: list[FreeForm] = Field(
        default_factory=list,
        max_length=32,
        description="core/v1 Tolerations of the server and router pods.",
    )


class ServingPhase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


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


class InferenceServiceStatus(CamelModel):
    """Observed state of an InferenceService, written by the operator."""

    observed_generation: int | None = Field(default=None, description="Generation described.")
    phase: ServingPhase | None = Field(default=None, description="Summary for printer columns.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, RolledBack, Degraded (metav1.Condition).",
    )
    url: str | None = Field(default=None, description="Where clients send requests.")
    model_uri: str | None = Field(default=None, description="The stable revision's model.")
    stable_revision: str | None = Field(default=None, description="Revision serving most traffic.")
    canary_revision: str | None = Field(default=None, description="Revision under analysis.")
    canary_weight: int | None = Field(default=None, description="Percent sent to the canary.")
    canary: CanaryStatus | None = Field(default=None, description="The latest rollout.")


INFERENCESERVICE = KindInfo(
    kind="InferenceService",
    plural="inferenceservices",
    short_names=("misvc",),
    spec=InferenceServiceSpec,
    status=InferenceServiceStatus,
    description="A served model whose new revisions go through a Prometheus-gated canary.",
    longest_child=LongestChild("NAME-0123456789", "a revision's Service: NAME and 10 hex digits"),
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Canary%", "type": "integer", "jsonPath": ".status.canaryWeight"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)
