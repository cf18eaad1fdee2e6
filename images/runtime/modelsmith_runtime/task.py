"""Load the task config the operator wrote, and the kind's spec inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from modelsmith.contract import TASK_API_VERSION, Producer, TaskConfig
from modelsmith_runtime.errors import BadInputError

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True)
class Task(Generic[SpecT]):
    config: TaskConfig
    spec: SpecT
    worker_index: int
    workers: int
    attempt: int
    """How many times this worker failed before (0 on the first run)."""

    @property
    def producer(self) -> Producer:
        """Who publishes: recorded in the manifest, and the attempt names a retry's place."""
        c = self.config
        return Producer(kind=c.kind, name=c.name, uid=c.uid, attempt=self.attempt)

    def input(self, name: str) -> str:
        uri = self.config.inputs.get(name)
        if not uri:
            raise BadInputError("MissingInput", f"task config has no input {name!r}")
        return uri


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise BadInputError("InvalidEnvironment", f"{name}={raw!r} is not an integer") from exc


def load_task(path: Path, spec_model: type[SpecT]) -> Task[SpecT]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInputError("MissingTaskConfig", f"cannot read task config {path}: {exc}") from exc
    try:
        config = TaskConfig.model_validate_json(text)
    except ValidationError as exc:
        raise BadInputError("InvalidTaskConfig", f"{path}: {exc}") from exc
    if config.api_version != TASK_API_VERSION:
        raise BadInputError(
            "UnsupportedTaskConfig",
            f"{path}: apiVersion {config.api_version}, this image reads {TASK_API_VERSION}",
        )
    try:
        spec = spec_model.model_validate(config.spec)
    except ValidationError as exc:
        raise BadInputError("InvalidSpec", f"{path}: spec: {exc}") from exc
    return Task(
        config=config,
        spec=spec,
        worker_index=_int_env("MODELSMITH_WORKER_INDEX", 0),
        workers=_int_env("MODELSMITH_WORKERS", 1),
        attempt=_int_env("MODELSMITH_ATTEMPT", 0),
    )
