"""The pods of a run form a Ray cluster: pod 0 is the head and runs the driver.

The operator runs Ray the way it runs torchrun, inside the run's own Indexed Job, so
retries, the termination-message contract, the status server and quotas work the same
for both (KubeRay's RayJob would add a second controller and a second status to
follow). It sets MODELSMITH_RAY_HEAD (pod 0's stable DNS name through the run's
headless Service) and the Job's success policy ends the run when pod 0 succeeds,
terminating the worker pods, which otherwise serve Ray until they are stopped.

Outside a pod (tests, a laptop) `connect` starts a local Ray instance, or joins the
cluster that RAY_ADDRESS names, so the same driver code runs everywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from modelsmith_runtime.errors import BadInputError, TransientError

log = logging.getLogger(__name__)

HEAD_ENV = "MODELSMITH_RAY_HEAD"
PORT_ENV = "MODELSMITH_RAY_PORT"
NODES_ENV = "MODELSMITH_WORKERS"
INDEX_ENV = "MODELSMITH_WORKER_INDEX"
JOIN_TIMEOUT_ENV = "MODELSMITH_RAY_JOIN_TIMEOUT"
DEFAULT_PORT = 6379
DEFAULT_JOIN_TIMEOUT = 600.0
"""Seconds the head waits for every worker pod to join: pods of one Job can be
scheduled minutes apart on a busy cluster. Past it the attempt fails as transient."""
RECONNECT_PAUSE = 5.0
STOP_GRACE = 10.0
HEAD_START_TIMEOUT = 120.0
"""Seconds for our own head to come up (about 6 s on two cores)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BadInputError(
            "Unsupported",
            "this image has no Ray: install modelsmith-runtime[ray] or use the default engine",
        ) from exc
    return ray


def _ray_cli() -> str:
    """The `ray` script next to this interpreter (a venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def in_cluster(env: Mapping[str, str]) -> bool:
    return bool(env.get(HEAD_ENV))


def is_worker_pod(env: Mapping[str, str]) -> bool:
    """A pod that only lends its node to the head's driver."""
    return in_cluster(env) and (env.get(INDEX_ENV) or "0") != "0"


def head_address(env: Mapping[str, str]) -> str:
    return f"{env[HEAD_ENV]}:{env.get(PORT_ENV) or DEFAULT_PORT}"


def _block(args: list[str]) -> subprocess.Popen[bytes]:
    """`ray start … --block` as our child: stopping it stops exactly the Ray processes
    it started (`ray stop` would stop every Ray instance of the user on the machine)."""
    return subprocess.Popen([_ray_cli(), "start", *args, "--block", "--disable-usage-stats"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: after the head is gone a node's drain waits 30 s for a GCS
    that will not answer, and the pod's grace period is not much longer."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_worker(env: Mapping[str, str]) -> int:
    """Join the head and serve until the Job stops this pod (exit 0 on SIGTERM).

    A head that fails is retried by the Job as a new pod under the same DNS name, so a
    lost connection is not this pod's failure: it rejoins instead of using up a retry.
    """
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    address = head_address(env)
    while not stopping:
        log.info("joining the Ray head at %s", address)
        proc = _block([f"--address={address}"])
        while proc.poll() is None and not stopping:
            time.sleep(0.5)
        _stop(proc)
        if not stopping:
            log.warning("left the Ray cluster (exit %s); rejoining", proc.returncode)
            time.sleep(RECONNECT_PAUSE)
    return 0


def _alive_nodes(ray: Any) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _init_when_up(ray: Any, address: str, head: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            raise TransientError("RayHeadFailed", f"the Ray head exited with {head.returncode}")
        try:
            ray.init(address=address, log_to_driver=True)
            return
        except ConnectionError as exc:
            if time.monotonic() > deadline:
                raise TransientError("RayHeadFailed", f"no Ray head at {address}: {exc}") from exc
            time.sleep(1.0)


def _wait_for_nodes(ray: Any, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (have := _alive_nodes(ray)) < want:
        if time.monotonic() > deadline:
            raise TransientError(
                "RayWorkersMissing", f"{have} of {want} Ray nodes joined within {timeout:.0f}s"
            )
        time.sleep(1.0)
    log.info("Ray cluster ready: %d node(s)", want)


@contextmanager
def connect(env: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Ray, connected and with every node of the run joined; yields the `ray` module."""
    env = os.environ if env is None else env
    ray = _import_ray()
    if in_cluster(env):
        port = env.get(PORT_ENV) or str(DEFAULT_PORT)
        timeout = float(env.get(JOIN_TIMEOUT_ENV) or DEFAULT_JOIN_TIMEOUT)
        head = _block(["--head", f"--port={port}", "--include-dashboard=false"])
        try:
            _init_when_up(ray, head_address(env), head, HEAD_START_TIMEOUT)
            _wait_for_nodes(ray, int(env.get(NODES_ENV) or 1), timeout)
            yield ray
        finally:
            ray.shutdown()
            _stop(head)
        return
    if env.get("RAY_ADDRESS"):
        ray.init(address=env["RAY_ADDRESS"])
    else:
        # "local": never join a cluster someone else started on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()
