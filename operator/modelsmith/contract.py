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
"""Written last into a published artifact: without it, the artifact does not exist.

Never empty (KServe's S3 download skips zero-byte objects): a JSON `Manifest`."""
MOUNTS_ENV = "MODELSMITH_MOUNTS"
"""JSON object {uri_prefix: local_dir} the operator sets on every workload container:
where each mounted URI (a pvc:// claim or sub-path, a model fetched by the init
container) is inside the pod. A URI resolves through its longest prefix that ends on a
"/" boundary; a pvc:// URI with no entry is not mounted in this pod."""
MOUNT_ROOT = "/mnt/modelsmith"
"""Fixed in-pod paths: `rw/<claim>` (the output claim, read-write), `ro/<claim>` (input
claims, read-only), `model` (a served model fetched before the server starts)."""
SCRATCH_DIR = "/tmp"  # noqa: S108 (an emptyDir the operator mounts, not the image's /tmp)
"""Staging, downloads and caches: an emptyDir with a size limit under a read-only root."""


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
    output: str = Field(
        description="Where the artifact is published: the first attempt publishes exactly "
        "here; if a complete artifact is already here (an earlier attempt published it), "
        "beside it at `<output>-attempt-<attempt>`, never over it."
    )
    uid: str | None = Field(
        default=None, description="metadata.uid of the resource: recorded as the producer."
    )
    spec: dict[str, Any] = Field(description="The resource's spec, camelCase, as applied.")


class ManifestFile(_Model):
    path: str = Field(description="Relative to the artifact's root, '/'-separated.")
    size: int = Field(ge=0)
    sha256: str


class Producer(_Model):
    kind: str
    name: str
    uid: str | None = None
    attempt: int = 0


class Manifest(_Model):
    """The completion marker's content: what was published, by whom, file by file.

    Readers take only the files listed here and check their sizes, so the leftovers of
    a killed upload under the same prefix are never mistaken for part of the artifact.
    Unknown keys are kept for what a stage adds (format, fingerprint, …).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    digest: str = Field(description="sha256 over every file's path and content.")
    producer: Producer | None = None
    version: str | None = Field(
        default=None, description="The producing resource's spec.version (SemVer), if set."
    )
    files: list[ManifestFile] = Field(default_factory=list)


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

    uri: str | None = Field(
        default=None,
        description="Where the artifact was really published (a URI, never a "
        "pod-local path): the output, or the place beside it a retry published at.",
    )
    digest: str | None = None
    size_bytes: int | None = Field(default=None, description="Bytes of the published files.")
    metrics: dict[str, float] = Field(default_factory=dict)
    version: str | None = Field(
        default=None, description="The version the published artifact's manifest records."
    )
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
