"""Pieces every kind shares: inputs by URI or reference, outputs, scheduling, status.

Kept in one place so the five CRDs say the same thing the same way, as Kubeflow
Trainer and KubeRay users expect (resources, nodeSelector, tolerations, runPolicy…).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from modelsmith.api.meta import CamelModel, Condition, Rule, Rules
from modelsmith.api.uri import OutputUri, Uri

__all__ = ["OutputUri", "Uri"]

DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Name = Annotated[str, Field(pattern=DNS_NAME, min_length=1, max_length=253)]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$")]
FreeForm = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]
"""A Kubernetes object we pass through untouched (tolerations, affinity, valueFrom)."""

_NUMERIC = r"0|[1-9]\d*"
_PRE_RELEASE_ID = rf"(?:{_NUMERIC}|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER = (
    rf"^(?:{_NUMERIC})\.(?:{_NUMERIC})\.(?:{_NUMERIC})"
    rf"(?:-{_PRE_RELEASE_ID}(?:\.{_PRE_RELEASE_ID})*)?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
)
"""Semantic Versioning 2.0.0, as semver.org's own expression states it (no leading zeros
in numeric identifiers, dot-separated pre-release and build identifiers), with only
non-capturing groups so the API server's RE2 and pydantic's Rust regex read it alike."""
SemVer = Annotated[str, Field(pattern=SEMVER, min_length=5, max_length=256)]


def immutable(message: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": message}]}


def defaulted(
    model: type[CamelModel], description: str, default: dict[str, Any] | None = None
) -> Any:
    """An optional nested object that the API server fills in, fully, when it is absent.

    Without a schema default the object is simply missing in etcd, and CEL rules that
    read through it (self.distribution.nodes) fail with "no such key". The default is
    the model's own, spelled out: the API server checks it against the CEL rules as it
    stands, without applying nested defaults first.
    """
    value = model.model_validate(default or {})
    return Field(
        default_factory=lambda: value,
        description=description,
        json_schema_extra={
            "default": value.model_dump(mode="json", by_alias=True, exclude_none=True)
        },
    )


def cel(*rules: tuple[str, str, Callable[[Any], bool]]) -> ConfigDict:
    """Model-level rules (CEL, message, the same condition in Python), defined once.

    The API server checks the CEL at apply time; pydantic checks the Python form
    whenever the model is parsed (the operator, the runtime reading a task config that
    may never have passed an API server, a test), with the same message. The two forms
    sit side by side here and nowhere else; tests/unit/test_rules.py runs the
    integration tier's apply-time cases through pydantic to keep them agreeing.
    """
    return ConfigDict(json_schema_extra=Rules(tuple(Rule(*r) for r in rules)))


class RefKind(StrEnum):
    DATA_PIPELINE = "DataPipeline"
    PRETRAIN_JOB = "PretrainJob"
    FINE_TUNE = "FineTune"
    QUANTIZE_JOB = "QuantizeJob"


class InputRef(CamelModel):
    """Another modelsmith resource in the same namespace whose status.outputs feeds this one."""

    kind: RefKind = Field(description="Kind of the upstream resource.")
    name: Name = Field(description="Name of the upstream resource, in this namespace.")


class Input(CamelModel):
    """Exactly one of: a URI, or a reference to the stage that produces it."""

    model_config = cel(
        (
            "has(self.uri) != has(self.fromRef)",
            "set exactly one of uri or fromRef",
            lambda s: (s.uri is None) != (s.from_ref is None),
        )
    )

    uri: Uri | None = Field(default=None, description="Read the input from this location.")
    from_ref: InputRef | None = Field(
        default=None,
        description="Read the input from the upstream resource's status.outputs.uri; the "
        "operator waits (reason WaitingForInput) until that resource has succeeded.",
    )


class Output(CamelModel):
    """Where a stage publishes its artifact (written atomically, then marked complete)."""

    uri: OutputUri | None = Field(
        default=None,
        description="Where the artifact is published: pvc://CLAIM/path or s3://BUCKET/prefix. "
        "Unset: under the operator's default store, at <store>/<namespace>/<kind>/<name>/"
        "<uid>. A retry never overwrites a published artifact: it publishes beside it "
        "(<uri>-attempt-N), and status.outputs.uri names the exact place.",
    )


class SecretRef(CamelModel):
    """A Secret in the resource's namespace, named only: the operator never reads it."""

    name: Name = Field(description="Secret name.")


class Storage(CamelModel):
    """How the pods reach object storage, and the scratch space they stage in."""

    secret_ref: SecretRef | None = Field(
        default=None,
        description="A Secret with the standard AWS keys for every s3:// URI this resource "
        "reads or writes: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required), "
        "AWS_SESSION_TOKEN, AWS_ENDPOINT_URL (S3-compatible stores), AWS_DEFAULT_REGION "
        "(optional). Unset: the operator's default storage Secret, if any; for workload "
        "identity set serviceAccountName instead.",
    )
    scratch_size: Quantity = Field(
        default="4Gi",
        description="Size limit of each pod's scratch emptyDir (/tmp: staging, downloads, "
        "caches), also requested as ephemeral-storage; the root filesystem is read-only.",
    )


class Resources(CamelModel):
    """Compute requested for each worker pod."""

    gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="nvidia.com/gpu per worker (pod). A PretrainJob runs one training "
        "process per GPU; 0 asks for no GPU and runs one process per pod on the CPU.",
    )
    cpu: Quantity = Field(default="1", description="CPU per worker (e.g. 4 or 500m).")
    memory: Quantity = Field(default="2Gi", description="Memory per worker (e.g. 16Gi).")


class EnvVar(CamelModel):
    """An environment variable for the workload container."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256, description="Variable name."
    )
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: FreeForm | None = Field(
        default=None, description="A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef…)."
    )


class RunPolicy(CamelModel):
    """How long and how often the workload may run (the Job's own knobs)."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description=(
            "Failures retried per worker before the run fails; a retried worker resumes from "
            "the latest checkpoint. Exit code 2 (bad input) is never retried."
        ),
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run once it has been active this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished Job (not the resource) after this."
    )


LabelValue = Annotated[str, Field(max_length=63)]


class PodMetadata(CamelModel):
    """Labels and annotations added to every pod (sidecar injection, scraping, cost tags)."""

    labels: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=64, description="Extra pod labels."
    )
    annotations: dict[str, Annotated[str, Field(max_length=65536)]] = Field(
        default_factory=dict, max_length=64, description="Extra pod annotations."
    )


class WorkloadSpec(CamelModel):
    """Fields every batch kind has: where its artifact goes, where its pods go, how they run."""

    output: Output = Field(
        default_factory=Output,
        description="Where the artifact is published. Immutable: changing it would orphan "
        "what was already written.",
        json_schema_extra=immutable("output is immutable") | {"default": {}},
    )
    storage: Storage = defaulted(Storage, "Object-storage credentials and scratch space.")
    resources: Resources = defaulted(Resources, "What each worker asks the scheduler for.")
    pod_metadata: PodMetadata = Field(
        default_factory=PodMetadata, description="Labels and annotations for the pods."
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Node labels the pods require."
    )
    tolerations: list[FreeForm] = Field(
        default_factory=list, max_length=32, description="core/v1 Tolerations for the pods."
    )
    affinity: FreeForm | None = Field(default=None, description="core/v1 Affinity for the pods.")
    priority_class_name: Name | None = Field(default=None, description="PriorityClass of the pods.")
    image: str | None = Field(
        default=None, max_length=512, description="Override the workload image (name:tag)."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Extra environment variables."
    )
    service_account_name: Name | None = Field(
        default=None, description="ServiceAccount the pods run as (e.g. for object storage)."
    )
    suspend: bool = Field(
        default=False,
        description="Pause: running pods stop, progress is kept; false resumes.",
    )
    run_policy: RunPolicy = defaulted(RunPolicy, "Retries, deadline and clean-up of the run.")


class ModelSpec(WorkloadSpec):
    """What every model-producing kind adds: the version its artifact is published as."""

    version: SemVer | None = Field(
        default=None,
        description="Semantic version (SemVer 2.0, e.g. 1.2.3, 1.2.3-alpha.20231001, "
        "1.2.3+build.7) recorded in the published model's manifest and reported in "
        "status.outputs.version; an InferenceService serving the model reports it for "
        "its stable and canary revisions.",
    )


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Progress(CamelModel):
    """How far the run is."""

    step: int | None = Field(default=None, description="Steps (or items) done.")
    total: int | None = Field(default=None, description="Steps (or items) in the whole run.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds left.")


class Outputs(CamelModel):
    """What a finished run published."""

    uri: str | None = Field(default=None, description="Where the artifact was published.")
    digest: str | None = Field(default=None, description="Content digest of the artifact.")
    size_bytes: int | None = Field(default=None, description="Bytes the artifact takes.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Headline metrics (loss, perplexity, tokens…)."
    )
    version: str | None = Field(
        default=None,
        description="The spec.version the artifact's manifest records, on the workload's word.",
    )


class LineageEntry(CamelModel):
    """One upstream artifact this resource was built from."""

    kind: str = Field(description="Kind of the upstream resource, or Uri for a plain input.")
    name: str | None = Field(default=None, description="Name of the upstream resource.")
    uri: str = Field(description="The artifact that was read.")
    digest: str | None = Field(default=None, description="Its digest, when known.")
    version: str | None = Field(default=None, description="Its version, when it has one.")


class CheckpointStatus(CamelModel):
    """The newest complete checkpoint a worker reported: where a retried pod resumes."""

    uri: str = Field(description="Where the checkpoint is stored.")
    step: int | None = Field(default=None, description="Training step it was taken at.")


class BatchStatus(CamelModel):
    """Observed state of a batch run, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    phase: Phase | None = Field(default=None, description="Summary for printer columns only.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Succeeded, Failed, Suspended (metav1.Condition).",
    )
    progress: Progress | None = Field(default=None, description="How far the run is.")
    start_time: datetime | None = Field(default=None, description="When the first pod started.")
    completion_time: datetime | None = Field(default=None, description="When the run finished.")
    outputs: Outputs | None = Field(default=None, description="What the run published.")
    lineage: list[LineageEntry] = Field(
        default_factory=list, description="The artifacts this one was built from."
    )
    restarts: int | None = Field(
        default=None, description="Worker pods that failed and were retried (or gave up)."
    )
    last_checkpoint: CheckpointStatus | None = Field(
        default=None, description="Newest checkpoint reported by a worker, kept across retries."
    )


def batch_columns(
    metric_name: str, metric_path: str, *, versioned: bool = False
) -> tuple[dict[str, Any], ...]:
    """Phase, progress, one key metric and age, as every batch kind shows them; a
    model-producing kind also shows the version its artifact was published as."""
    version = (
        [{"name": "Version", "type": "string", "jsonPath": ".status.outputs.version"}]
        if versioned
        else []
    )
    return (
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
        {"name": "Total", "type": "integer", "jsonPath": ".status.progress.total"},
        {"name": metric_name, "type": "number", "jsonPath": metric_path},
        *version,
        {"name": "Output", "type": "string", "jsonPath": ".status.outputs.uri", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )
