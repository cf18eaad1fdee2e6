"""What one server process serves and enforces: the task config's spec plus the pod's env.

Read before torch is imported, so a missing model, a half-written artifact or an empty
key file fails the pod in a second with exit code 2 instead of after a model load.
The key file is a mounted Secret: the kubelet swaps its content in place when the
Secret changes, so `ApiKeys` re-reads it when it changes rather than once at start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from modelsmith.api.inference import Batching, InferenceServiceSpec, Limits
from modelsmith_runtime import hfmodel
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.task import load_task

log = logging.getLogger(__name__)

PORT_ENV = "MODELSMITH_PORT"
KEY_FILE_ENV = "MODELSMITH_API_KEY_FILE"
REVISION_ENV = "MODELSMITH_REVISION"
DEFAULT_PORT = 8080
KEY_RECHECK_S = 5.0


class ApiKeys:
    """The accepted keys: one per line of the mounted file, blank and # lines skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys, self._stamp = self._read()
        self._checked = time.monotonic()

    def _read(self) -> tuple[frozenset[str], float]:
        try:
            stamp = self.path.stat().st_mtime
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise BadInputError("InvalidApiKeys", f"{KEY_FILE_ENV}={self.path}: {exc}") from exc
        keys = frozenset(k.strip() for k in lines if k.strip() and not k.startswith("#"))
        if not keys:
            raise BadInputError("InvalidApiKeys", f"{KEY_FILE_ENV}={self.path} holds no key")
        return keys, stamp

    def current(self) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= KEY_RECHECK_S:
                self._checked = now
                try:
                    if self.path.stat().st_mtime != self._stamp:
                        self._keys, self._stamp = self._read()
                        log.info("re-read %d API key(s) from %s", len(self._keys), self.path)
                except (OSError, BadInputError) as exc:  # mid-swap: keep the keys we have
                    log.warning("keeping the previous API keys: %s", exc)
            return self._keys


@dataclass(frozen=True)
class Settings:
    served_name: str
    """The `model` of OpenAI requests and the name in KServe's /v1 and /v2 paths."""
    model_uri: str
    model_dir: Path
    port: int
    revision: str
    limits: Limits
    batching: Batching
    blocklist: tuple[str, ...]
    api_keys: ApiKeys | None
    """None: no key is asked for (no apiKeySecret)."""


def _port() -> int:
    raw = os.environ.get(PORT_ENV, "")
    try:
        port = int(raw) if raw else DEFAULT_PORT
    except ValueError as exc:
        raise BadInputError("InvalidEnvironment", f"{PORT_ENV}={raw!r} is not a port") from exc
    if not 0 < port < 65536:
        raise BadInputError("InvalidEnvironment", f"{PORT_ENV}={raw!r} is not a port")
    return port


def load_settings(task_config: Path) -> Settings:
    task = load_task(task_config, InferenceServiceSpec)
    spec = task.spec
    uri = task.input("model")
    key_file = os.environ.get(KEY_FILE_ENV, "")
    return Settings(
        served_name=spec.served_model_name or task.config.name,
        model_uri=uri,
        model_dir=hfmodel.open_model(uri, "model"),
        port=_port(),
        revision=os.environ.get(REVISION_ENV, "") or task.config.name,
        limits=spec.limits,
        batching=spec.batching,
        blocklist=tuple(spec.output_filter.blocklist) if spec.output_filter else (),
        api_keys=ApiKeys(Path(key_file)) if key_file else None,
    )
