"""The operator as a separate process (`python -m modelsmith run`), under any identity.

The in-process KopfRunner shares this interpreter's admin kubeconfig; a process of its
own can run as the chart's ServiceAccount (a kubeconfig holding that account's token),
and several of them can peer, the way replicas of the Deployment do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelsmith.devcluster.cluster import DevCluster


def token_kubeconfig(cluster: DevCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the real API server that authenticates as a ServiceAccount."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    context = config["contexts"][0]["context"]
    config["users"] = [{"name": account, "user": {"token": token}}]
    context["user"] = account
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def handled(self, kind: str, name: str) -> bool:
        """Whether this process ran a handler for the object (from its JSON log)."""
        for line in self.output().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            obj = record.get("object") if isinstance(record, dict) else None
            if obj and (obj.get("kind"), obj.get("name")) == (kind, name):
                return True
        return False

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as the kubelet sends: kopf cleans up (its peering entry included)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def operator_process(
    kubeconfig: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    env = os.environ | {"KUBECONFIG": str(kubeconfig)} | (env or {})
    env.pop("MODELSMITH_STATUS_PORT", None)  # the in-process operators' port, not ours
    argv = [sys.executable, "-m", "modelsmith", "run", "--log-format=json", "--status-port=0"]
    with log.open("wb") as sink:
        proc = subprocess.Popen([*argv, *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
    running = OperatorProcess(proc, log)
    try:
        yield running
    finally:
        running.stop()
