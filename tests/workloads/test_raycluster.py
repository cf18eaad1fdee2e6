"""The pods of a Ray run form one cluster: a real head and a real worker on loopback.

The worker is the image's own entrypoint with the env a non-zero Job index gets, so
this also checks that such a pod lends its node instead of running the workload.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import free_port

HEAD = """
import json, time
from modelsmith_runtime import raycluster
from modelsmith_runtime.errors import TransientError
try:
    with raycluster.connect() as ray:
        alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])

        @ray.remote(num_cpus=0.01)
        def node():
            return ray.get_runtime_context().get_node_id()

        seen, deadline = set(), time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            spread = [node.options(scheduling_strategy="SPREAD").remote() for _ in range(8)]
            seen |= set(ray.get(spread))
        print(json.dumps({"alive": alive, "seen": sorted(seen)}))
except TransientError as exc:
    print(json.dumps({"reason": exc.reason, "message": exc.message}))
"""
"""Pod 0's side in a process of its own, as in a pod: Ray's driver keeps the first
token it reads for the life of its process, so it cannot share the test process with
other tests' Ray instances."""


def _pod_env(nodes: int) -> dict[str, str]:
    """What the operator's Job gives every pod of a Ray run (the token from its Secret)."""
    return {
        **os.environ,
        "MODELSMITH_RAY_HEAD": "127.0.0.1",
        "MODELSMITH_RAY_PORT": str(free_port()),
        "MODELSMITH_WORKERS": str(nodes),
        "MODELSMITH_RAY_JOIN_TIMEOUT": "120",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }


def _head(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", HEAD],
        env={**env, "MODELSMITH_WORKER_INDEX": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_worker_pod_joins_the_head_runs_its_tasks_and_leaves_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    env = _pod_env(nodes=2)
    log = tmp_path / "termination-log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain", "--task-config=/nonexistent"],
        env={**env, "MODELSMITH_WORKER_INDEX": "1", "MODELSMITH_TERMINATION_LOG": str(log)},
    )
    try:
        answer = _head(env)
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert len(answer["alive"]) == 2, answer
    assert answer["seen"] == answer["alive"], "both nodes ran tasks: the worker really serves"
    assert code == 0, "a worker pod stopped by the success policy ends cleanly"
    assert not log.exists(), "only pod 0 speaks for the run"


def test_head_gives_up_as_transient_when_workers_never_join() -> None:
    answer = _head({**_pod_env(nodes=2), "MODELSMITH_RAY_JOIN_TIMEOUT": "3"})
    assert answer["reason"] == "RayWorkersMissing", answer
    assert "1 of 2 Ray nodes joined" in answer["message"]
