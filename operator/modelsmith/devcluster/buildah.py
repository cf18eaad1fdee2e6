"""buildah, as the dev image modules call it: tools, logs, and what its store holds.

The dev images are built without a Docker engine (see images). This module is what
the base, the builds, the pushes and the store's housekeeping share: the check that
the tools are installed, running a step with its output in a log under
``~/.cache/modelsmith/images/logs``, and ``buildah inspect``.

This machine's quirks, found by testing: crun fails under buildah on hybrid cgroup v1
(``--runtime runc``), and outbound TLS is intercepted (the host's CA bundle is
bind-mounted over the image's for pip).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.tools import cache_root

PREFIX = "localhost/modelsmith"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_PACKAGES = "buildah mmdebstrap runc"

Log = Callable[[str], None]


def images_cache() -> Path:
    return cache_root() / "images"


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise DevClusterError(
            f"{', '.join(missing)} not found on PATH: the dev images are built without a "
            f"Docker engine, with buildah on a base made by mmdebstrap. On Debian/Ubuntu: "
            f"apt-get install -y --no-install-recommends {DEBIAN_PACKAGES}"
        )


def inspect(reference: str) -> dict[str, object] | None:
    require_tools("buildah")
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def image_exists(reference: str) -> bool:
    return inspect(reference) is not None


def image_info(reference: str) -> tuple[str, int]:
    """(image id, size in bytes): the sum of its uncompressed layers, as stored."""
    data = inspect(reference)
    if data is None:
        raise DevClusterError(f"buildah inspect {reference}: no such image")
    manifest = json.loads(str(data.get("Manifest") or "{}"))
    size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
    return str(data.get("FromImageID", "")), size


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def log_path(name: str, key: str) -> Path:
    path = images_cache() / "logs" / f"{name}-{key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_logged(argv: list[str], log_path: Path, what: str, *, capture: bool = False) -> str:
    """Run with its output appended to ``log_path``; with ``capture``, return its stdout."""
    with log_path.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.run(
            argv,
            check=False,
            stdout=subprocess.PIPE if capture else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
        text = proc.stdout.decode(errors="replace") if capture else ""
        out.write(text)
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines(keepends=True)
        raise DevClusterError(
            f"{what} failed (exit {proc.returncode}); full log: {log_path}\n{''.join(lines[-20:])}"
        )
    return text
