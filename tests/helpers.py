from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from modelsmith.devcluster.cluster import DevCluster

T = TypeVar("T")


def wait_for(
    fn: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25, what: str = ""
) -> T:
    """Poll until ``fn`` returns something truthy; fail with ``what`` on the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}; last={last!r}")


def kubectl_apply(
    cluster: DevCluster, namespace: str, doc: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` of one manifest, as a user would; the caller judges the outcome."""
    return cluster.run_kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc))


def free_port() -> int:
    """A loopback port free right now (another process may still take it: bind soon)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def sample_manifests() -> dict[str, dict[str, Any]]:
    """One valid manifest of each kind, from samples/ (chain, pipeline, service)."""
    docs = [*yaml.safe_load_all((SAMPLES / "chain.yaml").read_text())]
    docs.append(yaml.safe_load((SAMPLES / "datapipeline.yaml").read_text()))
    docs.append(yaml.safe_load((SAMPLES / "inferenceservice.yaml").read_text()))
    return {d["kind"]: d for d in docs if d}
