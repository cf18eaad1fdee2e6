"""A real Prometheus for tests and the dev loop: Debian's package, unpacked, no root.

`apt-get download` fetches the .deb through the Debian mirror this machine can reach
and `dpkg -x` unpacks it into the tool cache, so nothing is installed system-wide and
a fresh clone reuses it. `serve` starts it on loopback with a scrape config for the
given targets and waits until it answers /-/ready.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.tools import cache_root

PACKAGE = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"
"""Debian 12's; pinned so every machine runs the same Prometheus."""


def install_dir() -> Path:
    return cache_root() / "tools" / f"prometheus-{VERSION}"


def _download(folder: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", f"{PACKAGE}={VERSION}"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


def binary() -> Path:
    """The prometheus binary, downloaded and unpacked on first use."""
    target = install_dir() / "usr" / "bin" / "prometheus"
    if target.is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DevClusterError("Prometheus comes from Debian's package: apt-get and dpkg needed")
    with tempfile.TemporaryDirectory(prefix="prometheus-deb-") as scratch:
        fetched = _download(scratch)
        if fetched.returncode != 0:  # package lists missing or stale on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            fetched = _download(scratch)
        debs = list(Path(scratch).glob("*.deb"))
        if fetched.returncode != 0 or not debs:
            raise DevClusterError(f"apt-get download {PACKAGE}={VERSION}: {fetched.stderr}")
        staging = Path(tempfile.mkdtemp(prefix="prometheus-", dir=install_dir().parent.parent))
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True)
        install_dir().parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(install_dir())  # atomic: a concurrent install wins, ours goes
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    config: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Take Prometheus away (as an outage would); the context exit is then a no-op."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def reload(self) -> None:
        """Re-read the config (the scrape targets changed)."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310 (loopback)
            pass


def scrape_config(targets: Sequence[tuple[str, dict[str, str]]], interval: str) -> str:
    """One job per target, each with its labels (e.g. revision): a YAML document."""
    lines = [f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}"]
    lines.append("scrape_configs:")
    for index, (address, labels) in enumerate(targets):
        label_text = ", ".join(f'{k}: "{v}"' for k, v in sorted(labels.items()))
        lines.append(
            f"  - job_name: target-{index}\n"
            f"    static_configs:\n"
            f"      - targets: ['{address}']\n"
            f"        labels: {{{label_text}}}"
        )
    return "\n".join(lines) + "\n"


@contextmanager
def serve(
    targets: Sequence[tuple[str, dict[str, str]]], *, interval: str = "1s", timeout: float = 60
) -> Iterator[Server]:
    """Prometheus on 127.0.0.1 scraping ``targets`` (address, extra labels)."""
    exe = binary()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="prometheus-") as home:
        config = Path(home) / "prometheus.yml"
        config.write_text(scrape_config(targets, interval))
        log = (Path(home) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                str(exe),
                f"--config.file={config}",
                f"--storage.tsdb.path={home}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", config, proc)
        try:
            _wait_ready(server, proc, timeout, Path(home) / "prometheus.log")
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevClusterError(f"prometheus exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DevClusterError(f"prometheus not ready within {timeout}s: {log.read_text()[-2000:]}")
