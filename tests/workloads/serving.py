"""Run `modelsmith-runtime serve` as a real process on a free loopback port.

For any test that needs a live model server, the serve tests as well as those that
point something else at it (a canary against a real Prometheus, the router):

    from tests.workloads.serving import serve_model

    with serve_model(model_dir, {"limits": {"maxTokens": 64}}, workdir=tmp_path) as server:
        httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 8})
        server.metrics()["vllm:generation_tokens_total{model_name=tiny}"]

`model_dir` is a published Hugging Face model directory (tiny_model.tiny_model or
publish_model make one); the spec is the InferenceService spec (camelCase) without
`model`, which is filled in. `start_server` returns at once and `ServerProcess.wait_ready`
waits, so several servers can load side by side; `serve_model` does both and stops
the server (SIGTERM, as the kubelet does) at the end. Nothing here needs pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelsmith.contract import Result, TaskConfig, parse_result
from tests.helpers import free_port

READY_TIMEOUT_S = 180.0
POLL_S = 0.05


def serve_config(
    model: str, spec: dict[str, Any] | None = None, name: str = "tiny"
) -> dict[str, Any]:
    """The task config the operator would write for an InferenceService ``name``."""
    return TaskConfig(
        kind="InferenceService",
        name=name,
        inputs={"model": model},
        output="",
        spec={"model": {"uri": model}, **(spec or {})},
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus text page as {name or name{label=value,...}: value}, labels sorted."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


@dataclass
class ServerProcess:
    """One server process; ``url`` is http://127.0.0.1:<port>."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path
    name: str
    api_key: str | None
    readiness: list[tuple[int, int]] = field(default_factory=list)
    """(liveness status, readiness status) seen while waiting; 0 when refused."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """Authorization for the first API key, when the server asks for one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def saw_loading(self) -> bool:
        """Whether the server was live but not ready at some point: the model loading."""
        return any(live == 200 and ready == 503 for live, ready in self.readiness)

    def log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

    def result(self) -> Result | None:
        """What the process wrote to its termination log (after it stopped)."""
        path = self.workdir / "termination-log"
        return parse_result(path.read_text()) if path.exists() else None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server exited {self.process.returncode} before it was ready\n"
                        f"{self.log()[-4000:]}"
                    )
                statuses = []
                for path in ("/v2/health/live", "/v2/health/ready"):
                    try:
                        statuses.append(client.get(self.url + path).status_code)
                    except httpx.TransportError:
                        statuses.append(0)
                self.readiness.append((statuses[0], statuses[1]))
                if statuses[1] == 200:
                    return self
                time.sleep(POLL_S)
        raise TimeoutError(f"server not ready after {timeout}s\n{self.log()[-4000:]}")

    def metrics(self) -> dict[str, float]:
        """The server's /metrics now (it needs no key), parsed by `parse_metrics`."""
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and an error past ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_server(
    model: str,
    spec: dict[str, Any] | None = None,
    *,
    workdir: Path,
    name: str = "tiny",
    api_keys: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start the server (not waiting for it); its log and termination log go to workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "task.json"
    config.write_text(json.dumps(serve_config(model, spec, name)))
    port = free_port()
    full_env = {
        **os.environ,
        "MODELSMITH_PORT": str(port),
        "MODELSMITH_TERMINATION_LOG": str(workdir / "termination-log"),
        "MODELSMITH_REVISION": f"{name}-test",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    if api_keys:
        keys = workdir / "api-keys"
        keys.write_text("".join(f"{k}\n" for k in api_keys))
        full_env["MODELSMITH_API_KEY_FILE"] = str(keys)
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelsmith_runtime.cli", "serve", f"--task-config={config}"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(process, port, workdir, name, api_keys[0] if api_keys else None)


@contextmanager
def serve_model(
    model: str,
    spec: dict[str, Any] | None = None,
    *,
    workdir: Path,
    name: str = "tiny",
    api_keys: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """A ready server for the ``with`` block, stopped with SIGTERM after it."""
    server = start_server(model, spec, workdir=workdir, name=name, api_keys=api_keys, env=env)
    try:
        yield server.wait_ready()
    finally:
        with suppress(subprocess.TimeoutExpired):
            server.stop()


def sse_events(response: httpx.Response) -> list[dict[str, Any] | str]:
    """A streamed answer's server-sent events: parsed JSON, or "[DONE]"."""
    events: list[dict[str, Any] | str] = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events
