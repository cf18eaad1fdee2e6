"""Start, find and stop the control plane's processes without a supervisor daemon.

Each process gets its own session (process group), so `down` can end it together with
anything it spawned, and the CLI that started it can exit. What runs is recorded in a
JSON state file; a recorded pid only counts as ours while /proc says it still runs the
binary we started, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError


@dataclass(frozen=True)
class Running:
    name: str
    pid: int
    argv: list[str]
    port: int
    log: str
    exe: str = ""
    """The binary that ends up running, when argv[0] only execs it (nsenter)."""


@dataclass(frozen=True)
class NodeProcess:
    """One process of the real node's stack, before it runs."""

    name: str
    argv: list[str]
    exe: str
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    """Added to the environment (secrets stay out of argv, which `ps` and state show)."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def is_alive(proc: Running) -> bool:
    """True while ``proc.pid`` still runs the binary we started (not a recycled pid).

    /proc/<pid>/exe, not cmdline: cmdline reads as empty while a freshly exec'd process
    is still faulting its memory in, which made a starting etcd look dead.
    """
    try:
        exe = str(Path(f"/proc/{proc.pid}/exe").readlink())
    except OSError:
        return False  # gone, a zombie (no exe), or not ours to inspect
    exe = exe.removesuffix(" (deleted)")
    if exe == os.path.realpath(proc.exe or proc.argv[0]):
        return True
    # A process started through a launcher (nsenter) runs the launcher until it execs:
    # seen in that moment, a starting kube-proxy was reported dead.
    launcher = shutil.which(proc.argv[0]) if proc.exe else None
    return launcher is not None and exe == os.path.realpath(launcher)


def start(
    name: str,
    argv: list[str],
    port: int,
    log: Path,
    *,
    exe: str = "",
    env: dict[str, str] | None = None,
) -> Running:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env} if env else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Running(name=name, pid=proc.pid, argv=argv, port=port, log=str(log), exe=exe)


def stop(proc: Running, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
    if not is_alive(proc):
        return
    with contextlib.suppress(OSError), Path(proc.log).open("a") as log:
        log.write(f"--- modelsmith: stopping {proc.name} (pid {proc.pid}) with SIGTERM\n")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not is_alive(proc):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(proc) and time.monotonic() < deadline:
        _reap(proc.pid)
        time.sleep(0.05)
    if is_alive(proc):
        raise DevClusterError(f"{proc.name} (pid {proc.pid}) survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: str | Path, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])


class StateFile:
    """The list of processes one `up` started, in start order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Running]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise DevClusterError(f"cannot read dev cluster state {self.path}: {exc}") from exc
        return [Running(**item) for item in raw.get("processes", [])]

    def save(self, procs: list[Running]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": [asdict(p) for p in procs]}, indent=2))
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def du_bytes(root: Path) -> int:
    """Disk blocks under ``root`` (like `du -s`, counting hard links once), in bytes."""
    if not root.exists():
        return 0
    done = subprocess.run(
        ["du", "-sx", "--block-size=1", str(root)], capture_output=True, text=True, check=False
    )
    fields = done.stdout.split()
    return int(fields[0]) if fields else 0


def wait_until(
    check: Callable[[], bool],
    what: str,
    proc: Running,
    timeout: float,
    error: type[DevClusterError] = DevClusterError,
) -> None:
    """Poll ``check``; fail fast with ``proc``'s log when it dies, clearly on the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if not is_alive(proc):
            raise error(
                f"{proc.name} exited while waiting for {what}; last lines of "
                f"{proc.log}:\n{tail(proc.log)}"
            )
        if time.monotonic() > deadline:
            raise error(
                f"timed out after {timeout:.0f}s waiting for {what} (raise "
                f"MODELSMITH_DEV_TIMEOUT to wait longer); last lines of "
                f"{proc.log}:\n{tail(proc.log)}"
            )
        time.sleep(0.25)
