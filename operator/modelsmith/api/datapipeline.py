"""DataPipeline: raw text in, cleaned and tokenized training shards out.

This first cut carries what the operator needs to run the pipeline as a Job (sources,
output, workers, resources); filters, dedup and tokenizer settings come with the full
API (issue 3).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from modelsmith.api.meta import CamelModel, Condition, KindInfo

URI_PATTERN = r"^(file://|s3://|gs://|pvc://|/).+"
Uri = Annotated[str, Field(pattern=URI_PATTERN, max_length=2048)]
"""A storage location: a mounted path, file://, s3://, gs:// or pvc://."""


class SourceFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    TEXT = "text"


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class DataSource(CamelModel):
    """One raw corpus and its share of the mixture."""

    uri: Uri = Field(
        description="Where the raw documents are: a path on a mounted volume, file://, "
        "s3:// or gs://."
    )
    format: SourceFormat = Field(description="How the documents are stored.")
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Mixture weight: sources are sampled in proportion to their weights.",
    )


class Output(CamelModel):
    """Where the pipeline publishes its shards."""

    uri: Uri = Field(
        description="Where the tokenized shards are published. Immutable: changing it would "
        "orphan what was already written."
    )


class Resources(CamelModel):
    """Compute requested for each worker pod."""

    gpus: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu per worker.")
    cpu: str = Field(
        default="1",
        pattern=r"^[0-9]+(\.[0-9]+)?m?$",
        description="CPU per worker, as a Kubernetes quantity (e.g. 4 or 500m).",
    )
    memory: str = Field(
        default="2Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
        description="Memory per worker, as a Kubernetes quantity (e.g. 16Gi).",
    )


class DataPipelineSpec(CamelModel):
    sources: list[DataSource] = Field(
        min_length=1, max_length=64, description="The raw corpora to mix, clean and tokenize."
    )
    output: Output = Field(
        description="Where the shards go.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.uri == oldSelf.uri", "message": "output.uri is immutable"}
            ]
        },
    )
    workers: int = Field(
        default=1, ge=1, le=1024, description="Parallel workers, one Indexed Job pod each."
    )
    resources: Resources = Field(
        default_factory=Resources, description="What each worker asks the scheduler for."
    )
    image: str | None = Field(
        default=None, max_length=512, description="Override the data image (registry/name:tag)."
    )
    suspend: bool = Field(
        default=False, description="Pause: no new pods start while true (Job suspend)."
    )


class Outputs(CamelModel):
    """What a finished run produced."""

    uri: str | None = Field(default=None, description="Where the shards were published.")


class DataPipelineStatus(CamelModel):
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    phase: Phase | None = Field(default=None, description="Summary for printer columns only.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Succeeded, Failed, Suspended (metav1.Condition).",
    )
    start_time: datetime | None = Field(default=None, description="When the first pod started.")
    completion_time: datetime | None = Field(default=None, description="When the run finished.")
    outputs: Outputs | None = Field(default=None, description="What the run published.")


DATAPIPELINE = KindInfo(
    kind="DataPipeline",
    plural="datapipelines",
    short_names=("dp",),
    spec=DataPipelineSpec,
    status=DataPipelineStatus,
    description="Raw text to cleaned, deduplicated, tokenized training shards.",
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
        {"name": "Output", "type": "string", "jsonPath": ".status.outputs.uri", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ),
)
