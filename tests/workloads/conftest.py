"""Run the image entrypoints as real processes, the way a pod runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import Result, TaskConfig, parse_result
from tests.workloads.s3 import s3, s3_endpoint  # noqa: F401 (fixtures for every module)


@dataclass(frozen=True)
class Run:
    returncode: int
    result: Result | None
    """What the process wrote to its termination log."""
    output: str
    """stdout and stderr, for assertion messages."""


def task_config(kind: str, spec: dict[str, Any], output: str, **inputs: str) -> dict[str, Any]:
    return TaskConfig(kind=kind, name="test", inputs=inputs, output=output, spec=spec).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )


def run_component(
    component: str,
    config: dict[str, Any] | str,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    argv: list[str] | None = None,
) -> Run:
    """``modelsmith-runtime <component>`` in a subprocess; config may be raw text."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "task.json"
    config_path.write_text(config if isinstance(config, str) else json.dumps(config))
    log = workdir / "termination-log"
    log.unlink(missing_ok=True)
    full_env = {
        **os.environ,
        "MODELSMITH_TERMINATION_LOG": str(log),
        "MODELSMITH_METRICS_PORT": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    command = argv or [sys.executable, "-m", "modelsmith_runtime.cli", component]
    proc = subprocess.run(
        [*command, f"--task-config={config_path}"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    message = log.read_text() if log.exists() else None
    return Run(proc.returncode, parse_result(message), proc.stdout + proc.stderr)


def pod_env(per_node: int, nodes: int = 1) -> dict[str, str]:
    """What the operator's Job gives a worker pod; the runtime starts torchrun itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {
        "NNODES": str(nodes),
        "NPROC_PER_NODE": str(per_node),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "MODELSMITH_WORKER_INDEX": "0",
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray instance of the module's own, joined as a driver pod joins its head.

    address="local": a new instance, even if someone ran `ray start` on this machine.
    """
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def run_data_workers(config: dict[str, Any], workdir: Path, workers: int = 2) -> list[Run]:
    """The workers of one DataPipeline run at once, as its Indexed Job's pods run;
    their runs in worker-index order. Worker 0 (the reduce) is started last."""
    from concurrent.futures import ThreadPoolExecutor

    env = {"MODELSMITH_WORKERS": str(workers), "MODELSMITH_DATA_PARTS_TIMEOUT": "120"}

    def worker(index: int) -> Run:
        own = {**env, "MODELSMITH_WORKER_INDEX": str(index)}
        return run_component("data", config, workdir / f"w{index}", env=own)

    with ThreadPoolExecutor(workers) as pool:
        runs = list(pool.map(worker, reversed(range(workers))))
    return runs[::-1]
