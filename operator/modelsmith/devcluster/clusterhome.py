"""Where the dev cluster keeps its state, and what configures it.

The home directory (MODELSMITH_DEV_HOME, or under XDG_STATE_HOME) holds the
certificates, the kubeconfig, etcd's data and the components' configs; they are kept
across `down`/`up` so the next `up` brings back the same cluster.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TypeVar

import yaml

from modelsmith.devcluster import pki, prometheus
from modelsmith.devcluster.components import (
    Ports,
    prometheus_config,
    registry_config,
    stages_bytes,
    stages_path,
)
from modelsmith.devcluster.errors import DevClusterError

DEFAULT_PORT_BASE = 16440
DEFAULT_TIMEOUT = 90.0
CLUSTER_NAME = "modelsmith-dev"

_Number = TypeVar("_Number", int, float)


def env_number(name: str, default: _Number, kind: type[_Number]) -> _Number:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise DevClusterError(f"{name}={raw!r} is not {expected}") from None


def default_home() -> Path:
    explicit = os.environ.get("MODELSMITH_DEV_HOME")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "modelsmith" / "devcluster"


def prepare_home(
    home: Path, ports: Ports, certs: pki.PKIPaths, server: str, kubeconfig: Path
) -> None:
    """Keep the certificates (and so the kubeconfig) while all of them are there."""
    home.mkdir(parents=True, exist_ok=True)
    if not pki.complete(certs):
        shutil.rmtree(home / "pki", ignore_errors=True)
        shutil.rmtree(home / "etcd", ignore_errors=True)  # its tokens need the old key
        pki.generate(home / "pki")
    write_kubeconfig(kubeconfig, server, certs)
    stages_path(home).write_bytes(stages_bytes())
    registry_file, registry_text = registry_config(home, ports)
    registry_file.write_text(registry_text)
    pki.client_pair(certs, prometheus.DEV_CLIENT, prometheus.DEV_USER)
    prometheus_file, prometheus_text = prometheus_config(home, ports, certs)
    prometheus_file.write_text(prometheus_text)


def write_kubeconfig(kubeconfig: Path, server: str, paths: pki.PKIPaths) -> None:
    config = pki.kubeconfig(
        CLUSTER_NAME,
        server,
        paths.ca_cert,
        user=pki.ADMIN_USER,
        cert=paths.admin_cert,
        key=paths.admin_key,
        embed=True,
    )
    tmp = kubeconfig.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.chmod(0o600)
    tmp.replace(kubeconfig)
