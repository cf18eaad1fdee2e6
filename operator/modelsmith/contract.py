"""The contract between the operator and the workload images, in one versioned place.

Both sides import this module, and it needs nothing but pydantic, so an image does not
pull in kopf or the Kubernetes client. The operator writes a `TaskConfig` into a
ConfigMap; the workload reads it, publishes its artifact atomically, and ends by writing
a `Result` to its termination message, which the operator copies into status.
Exit codes tell the Job controller what a failure means (see `desired_job`'s
podFailurePolicy): bad input fails the run at once, anything else is retried.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

TASK_API_VERSION = "task.modelsmith.io/v1alpha1"
TASK_CONFIG_DIR = "/etc/modelsmith"
TASK_CONFIG_KEY = "task.json"
TASK_CONFIG_PATH = f"{TASK_CONFIG_DIR}/{TASK_CONFIG_KEY}"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
"""The kubelet keeps at most 4 KiB of a termination message; a Result must fit."""
COMPLETION_MARKER = "_MODELSMITH_COMPLETE.json"
"""Written last into a published artifact: without it, the artifact does not exist."""


class ExitCode(IntEnum):
    OK = 0
    TRANSIENT = 1
    """Anything that may pass on a retry: node loss, NCCL timeout, OOM, storage hiccup."""
    BAD_INPUT = 2
    """The task config, an input artifact or the data is wrong: retrying cannot help."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class TaskConfig(_Model):
    """What the operator hands a workload: the resource's spec with inputs resolved."""

    api_version: str = Field(default=TASK_API_VERSION, pattern=r"^task\.modelsmith\.io/")
    kind: str
    name: str
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Input name -> URI, every fromRef already resolved."
    )
    output: str = Field(description="Where the artifact is published.")
    spec: dict[str, Any] = Field(description="The resource's spec, camelCase, as applied.")


class CheckpointInfo(_Model):
    uri: str
    step: int | None = None


class ErrorInfo(_Model):
    reason: str = Field(description="CamelCase, machine-readable: BadInput, NaNLoss, …")
    message: str


class ProgressInfo(_Model):
    step: int | None = None
    total: int | None = None


class Result(_Model):
    """What a workload writes to its termination message, on success and on failure.

    Unknown fields are ignored: an operator must still read what a newer image writes.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    uri: str | None = None
    digest: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    checkpoint: CheckpointInfo | None = Field(
        default=None, description="The latest complete checkpoint: where a retry resumes."
    )
    progress: ProgressInfo | None = None
    error: ErrorInfo | None = None

    def render(self) -> str:
        """JSON that fits the kubelet's limit: metrics are dropped before anything else."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            text = self.model_copy(update={"metrics": {}}).model_dump_json(
                by_alias=True, exclude_none=True
            )
        if len(text.encode()) > TERMINATION_MESSAGE_LIMIT and self.error:
            short = ErrorInfo(reason=self.error.reason, message=self.error.message[:1024])
            text = self.model_copy(update={"metrics": {}, "error": short}).model_dump_json(
                by_alias=True, exclude_none=True
            )
        return text


def parse_result(message: str | None) -> Result | None:
    """A termination message as a Result; None for logs (FallbackToLogsOnError) or junk."""
    if not message:
        return None
    try:
        raw = json.loads(message)
        if not isinstance(raw, dict):
            return None
        metrics = raw.get("metrics")
        if isinstance(metrics, dict):
            # One odd metric must not cost the whole result (uri, digest, checkpoint).
            raw["metrics"] = {
                k: v
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        return Result.model_validate(raw)
    except ValueError:
        return None
