"""The pods of a Ray run form one cluster: a real head and a real worker on loopback.

The worker is the image's own entrypoint with the env a non-zero Job index gets, so
this also checks that such a pod lends its node instead of running the workload.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelsmith_runtime import raycluster
from modelsmith_runtime.errors import TransientError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


TOKEN = secrets.token_hex(16)
"""One token for the module: Ray's driver caches the first token it reads for the life
of the process, as a pod's single driver would."""


def _pod_env(nodes: int) -> dict[str, str]:
    """What the operator's Job gives every pod of a Ray run (the token from its Secret)."""
    return {
        "MODELSMITH_RAY_HEAD": "127.0.0.1",
        "MODELSMITH_RAY_PORT": str(_free_port()),
        "MODELSMITH_WORKERS": str(nodes),
        "MODELSMITH_RAY_JOIN_TIMEOUT": "120",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
    }


def _as_pod_0(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Ray reads its token from the process env, as in the pod: set it there."""
    for name, value in {**env, "MODELSMITH_WORKER_INDEX": "0"}.items():
        monkeypatch.setenv(name, value)


def test_worker_pod_joins_the_head_runs_its_tasks_and_leaves_cleanly_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _pod_env(nodes=2)
    _as_pod_0(monkeypatch, env)
    log = tmp_path / "termination-log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain", "--task-config=/nonexistent"],
        env={
            **os.environ,
            **env,
            "MODELSMITH_WORKER_INDEX": "1",
            "MODELSMITH_TERMINATION_LOG": str(log),
        },
    )
    try:
        with raycluster.connect() as ray:
            alive = [n for n in ray.nodes() if n["Alive"]]
            assert len(alive) == 2

            @ray.remote(num_cpus=0.01)
            def node() -> str:
                return str(ray.get_runtime_context().get_node_id())

            # Spread tasks until both nodes have run one: the worker really serves.
            seen: set[str] = set()
            deadline = time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline:
                seen |= set(
                    ray.get([node.options(scheduling_strategy="SPREAD").remote() for _ in range(8)])
                )
            assert seen == {n["NodeID"] for n in alive}
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, "a worker pod stopped by the success policy ends cleanly"
    assert not log.exists(), "only pod 0 speaks for the run"


def test_head_gives_up_as_transient_when_workers_never_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _as_pod_0(monkeypatch, {**_pod_env(nodes=2), "MODELSMITH_RAY_JOIN_TIMEOUT": "3"})
    with pytest.raises(TransientError) as info, raycluster.connect():
        pytest.fail("must not yield without every node")
    assert info.value.reason == "RayWorkersMissing", info.value.message
    assert "1 of 2 Ray nodes joined" in info.value.message
