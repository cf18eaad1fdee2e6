"""Other projects' CRDs (Gateway API, KServe), from their Go modules, for the dev cluster.

The traffic backends write HTTPRoutes and KServe InferenceServices; testing them against
the real schemas means installing the real CRDs. Both projects publish them inside their
Go modules, and the Go module proxy is reachable where release downloads are not, so
`go mod download` fetches them (checksummed by the Go checksum database, cached in
GOMODCACHE outside the repository).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.tools import find_go

GATEWAY_API = ("sigs.k8s.io/gateway-api", "v1.3.0", "config/crd/standard")
KSERVE = ("github.com/kserve/kserve", "v0.15.2", "config/crd/full")

CRDS = {
    "gateway-api": (GATEWAY_API, ("gateway.networking.k8s.io_httproutes.yaml",)),
    "kserve": (KSERVE, ("serving.kserve.io_inferenceservices.yaml",)),
}


def module_dir(module: str, version: str) -> Path:
    done = subprocess.run(
        [find_go(), "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    info = json.loads(done.stdout or "{}")
    if done.returncode != 0 or "Dir" not in info:
        raise DevClusterError(f"go mod download {module}@{version} failed: {info or done.stderr}")
    return Path(info["Dir"])


def crd_files(project: str) -> list[Path]:
    """The CRD manifests of ``project`` (gateway-api or kserve) on this machine."""
    (module, version, folder), names = CRDS[project]
    root = module_dir(module, version) / folder
    return [root / name for name in names]
