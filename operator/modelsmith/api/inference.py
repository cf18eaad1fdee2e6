"""InferenceService: a served model whose new versions reach users through a canary.

The canary's own models are api/canary.py's. The operator's handlers/inference.py
reconciles it; canary/ decides each step.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from modelsmith.api.canary import Canary, CanaryStatus
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
            lambda s: s.min_replicas <= s.max_replicas,
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
            lambda s: s.backend != "gateway-api" or s.gateway_ref is not None,
        )
    )

    backend: Backend = Field(default=Backend.ROUTER, description="Who shifts the traffic.")
    gateway_ref: GatewayRef | None = Field(
        default=None, description="gateway-api: the Gateway the route attaches to."
    )


class InferenceServiceSpec(CamelModel):
    """Desired state of an InferenceService."""

    model_config = cel(
        (
            "!has(self.canary) || self.traffic.backend == 'router' || "
            "self.canary.metrics.all(m, !has(m.builtin))",
            "canary builtin checks read the built-in router's metrics: with traffic.backend "
            "gateway-api or kserve, give each check a PromQL query instead",
            lambda s: (
                s.canary is None
                or s.traffic.backend == "router"
                or all(m.builtin is None for m in s.canary.metrics)
            ),
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
    stable_version: str | None = Field(
        default=None,
        description="The model version the stable revision serves (its producer's "
        "status.outputs.version; empty for a model by plain URI or without a version).",
    )
    canary_version: str | None = Field(
        default=None, description="The model version the canary revision serves."
    )
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
        {"name": "Version", "type": "string", "jsonPath": ".status.stableVersion"},
        {"name": "Canary%", "type": "integer", "jsonPath": ".status.canaryWeight"},
        {"name": "CanaryVersion", "type": "string", "jsonPath": ".status.canaryVersion"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)
