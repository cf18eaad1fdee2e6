"""Build the local control plane's binaries from the Go module proxy, once.

No release binaries can be downloaded on the machines this project runs on, and
Docker is absent, so the real Kubernetes (control plane and node), etcd, kwok, helm,
CoreDNS and registry binaries are compiled from source. Each tool has a committed
wrapper module (``gomod/<module>/go.mod`` and ``go.sum``, plus a small ``main.go``
where only part of a project is linked) so the build is reproducible and verified
against checksums. Finished binaries are cached outside the repository under a key
made of the tool's version and a hash of its recipe, so a fresh clone reuses them and
a changed recipe rebuilds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"
COREDNS_VERSION = "v1.15.0"
REGISTRY_VERSION = "v3.1.2"  # github.com/distribution/distribution/v3
PROMETHEUS_VERSION = "v0.315.1"  # Prometheus 3.15.1: its Go module's v0.3XX.Y is 3.XX.Y
PROVISIONER_VERSION = "v13.1.0"  # sigs.k8s.io/sig-storage-lib-external-provisioner/v13
VERSITYGW_VERSION = "v1.8.0"  # github.com/versity/versitygw: the only version the proxy serves

# etcd 3.6.16, kwok 0.8, helm 4.3, coredns 1.15 and distribution 3.1.2 declare go 1.26
MIN_GO = (1, 26)


def _version_ldflags(packages: tuple[str, ...], version: str) -> list[str]:
    """Stamp the version a binary reports; without it Kubernetes says v0.0.0-master."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in packages:
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return flags


@dataclass(frozen=True)
class GoTool:
    """One wrapper module and the commands built from it."""

    name: str
    version: str
    packages: dict[str, str]
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # The folder under gomod/ holding the recipe, when it is not ``name``: two tools
    # built from one module (the control plane and the node) share one go.sum.
    module: str | None = None

    @property
    def module_dir(self) -> str:
        return self.module or self.name

    def recipe_files(self) -> dict[str, bytes]:
        """go.mod, go.sum and any main package (*.go) of the tool's wrapper module."""
        root = resources.files("modelsmith.devcluster").joinpath("gomod", self.module_dir)
        sources = sorted(e.name for e in root.iterdir() if e.name.endswith(".go") and e.is_file())
        return {n: root.joinpath(n).read_bytes() for n in ("go.mod", "go.sum", *sources)}

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        for name, data in sorted(self.recipe_files().items()):
            digest.update(name.encode() + b"\0" + data)
        digest.update(repr((self.packages, self.ldflags, self.tags)).encode())
        return f"{self.name}-{self.version}-{digest.hexdigest()[:10]}"


_KUBERNETES_LDFLAGS = tuple(
    _version_ldflags(
        ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"), KUBERNETES_VERSION
    )
)
KUBERNETES = GoTool(
    name="kubernetes",
    version=KUBERNETES_VERSION,
    packages={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    },
    ldflags=_KUBERNETES_LDFLAGS,
    tags=("selinux", "notest"),
)
# The node's binaries, from the control plane's wrapper module (same version, same
# go.sum), but a tool of their own so the control plane does not wait for them.
KUBE_NODE = GoTool(
    name="kubernetes-node",
    module="kubernetes",
    version=KUBERNETES_VERSION,
    packages={
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    },
    ldflags=_KUBERNETES_LDFLAGS,
    tags=("selinux", "notest"),
)
ETCD = GoTool(
    name="etcd",
    version=ETCD_VERSION,
    packages={"etcd": "go.etcd.io/etcd/server/v3"},
)
KWOK = GoTool(
    name="kwok",
    version=KWOK_VERSION,
    packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
)
HELM = GoTool(
    name="helm",
    version=HELM_VERSION,
    packages={"helm": "helm.sh/helm/v4/cmd/helm"},
    ldflags=(f"-X helm.sh/helm/v4/internal/version.version={HELM_VERSION}",),
)
# The cluster's DNS: a main of our own (gomod/coredns/main.go) that links only the
# plugins the cluster needs, without forward, so pods never reach the host's resolver.
COREDNS = GoTool(
    name="coredns",
    version=COREDNS_VERSION,
    packages={"coredns": "modelsmith.dev/devcluster/coredns"},
)
# An OCI registry (`registry serve config.yml`) with only the filesystem storage
# driver: distribution's own cmd/registry links the S3, GCS and Azure SDKs.
REGISTRY = GoTool(
    name="registry",
    version=REGISTRY_VERSION,
    packages={"registry": "modelsmith.dev/devcluster/registry"},
    ldflags=(f"-X github.com/distribution/distribution/v3/version.version={REGISTRY_VERSION}",),
)

# The dev cluster's Prometheus. Debian's package (prometheus.binary(), which serves
# static targets in tests) is built without Kubernetes service discovery; this one has
# it and, by the plugins' build tags, no other (no AWS, Azure or GCE SDKs linked).
_PROMETHEUS_VERSION_PKG = "github.com/prometheus/common/version"
PROMETHEUS = GoTool(
    name="prometheus",
    version=PROMETHEUS_VERSION,
    packages={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
    ldflags=(
        f"-X {_PROMETHEUS_VERSION_PKG}.Version=3.15.1",
        f"-X {_PROMETHEUS_VERSION_PKG}.Revision={PROMETHEUS_VERSION}",
        f"-X {_PROMETHEUS_VERSION_PKG}.BuildDate=19700101-00:00:00",
    ),
    tags=("remove_all_sd", "enable_kubernetes_sd"),
)

# The node's dynamic PVC provisioner: a main of our own (gomod/provisioner/main.go) on
# sig-storage-lib-external-provisioner that makes a directory per claim under --root
# and returns a hostPath PV pinned to the claim's selected node.
PROVISIONER = GoTool(
    name="provisioner",
    version=PROVISIONER_VERSION,
    packages={"provisioner": "modelsmith.dev/devcluster/provisioner"},
)

# The dev cluster's S3-compatible object store: versitygw's posix backend keeps each
# bucket as a top-level directory and each object as a plain file under it. Pure Go and
# Apache-2.0; MinIO is AGPL-3.0 and has no semver versions on the proxy (see
# storage-research, section 4). Its go.mod has no replace lines, so cmd/versitygw builds
# as a dependency (a `tool` line in the wrapper's go.mod, no main.go of our own).
OBJECT_STORE = GoTool(
    name="versitygw",
    version=VERSITYGW_VERSION,
    packages={"versitygw": "github.com/versity/versitygw/cmd/versitygw"},
    ldflags=(
        f"-X main.Version={VERSITYGW_VERSION}",
        f"-X main.Build={VERSITYGW_VERSION}",
        "-X main.BuildTime=1970-01-01T00:00:00Z",
    ),
)

# In build order: what the control plane runs today first, the node and add-ons after.
ALL_TOOLS = (
    ETCD,
    KUBERNETES,
    KWOK,
    HELM,
    KUBE_NODE,
    COREDNS,
    REGISTRY,
    PROMETHEUS,
    PROVISIONER,
    OBJECT_STORE,
)


def cache_root() -> Path:
    """Outside any checkout, so fresh clones (and CI) reuse finished builds."""
    explicit = os.environ.get("MODELSMITH_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "modelsmith"


def tool_dir(tool: GoTool) -> Path:
    return cache_root() / "tools" / tool.cache_key()


def is_built(tool: GoTool) -> bool:
    return all((tool_dir(tool) / b).is_file() for b in tool.packages)


def binary(tool: GoTool, name: str) -> Path:
    path = tool_dir(tool) / name
    if not path.is_file():
        raise DevClusterError(
            f"{name} ({tool.name} {tool.version}) is not built yet; run `modelsmith dev build`"
        )
    return path


def find_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise DevClusterError(
            "Go is not installed or not on PATH: the local control plane is compiled from "
            f"source and needs Go >= {MIN_GO[0]}.{MIN_GO[1]} (https://go.dev/doc/install)"
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    raw = out.stdout.strip().removeprefix("go")
    try:
        have = tuple(int(p) for p in raw.split(".")[:2])
    except ValueError:
        return go  # a development toolchain (devel +abc): let the build decide
    if have < MIN_GO:
        raise DevClusterError(
            f"Go {raw} at {go} is too old: the control plane needs Go >= {MIN_GO[0]}.{MIN_GO[1]}"
        )
    return go


def build(tool: GoTool, *, log: bool = True) -> Path:
    """Compile ``tool`` unless cached; publish the binaries only when all of them built."""
    target = tool_dir(tool)
    if is_built(tool):
        return target
    lock_path = cache_root() / "build" / f"{tool.cache_key()}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent `up` waits for this build
        if is_built(tool):
            return target
        return _build_locked(tool, target, log=log)


def _build_locked(tool: GoTool, target: Path, *, log: bool) -> Path:
    go = find_go()
    work = cache_root() / "build" / tool.cache_key()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name, data in tool.recipe_files().items():
        (work / name).write_bytes(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{tool.name}-", dir=target.parent))
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=readonly -buildvcs=false",
        **tool.env,
    }
    argv = [go, "build", "-trimpath", "-ldflags", " ".join(("-s", "-w", *tool.ldflags))]
    if tool.tags:
        argv += ["-tags", ",".join(tool.tags)]
    argv += ["-o", str(staging) + os.sep, *tool.packages.values()]
    log_path = cache_root() / "build" / f"{tool.cache_key()}.log"
    if log:
        print(f"building {tool.name} {tool.version} (log: {log_path}) ...", file=sys.stderr)
    with log_path.open("w") as out:
        proc = subprocess.run(
            argv, check=False, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        if proc.returncode != 0:
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise DevClusterError(
                f"building {tool.name} {tool.version} failed (go build exit "
                f"{proc.returncode}); full log: {log_path}\n{tail}"
            )
        _rename_packages(staging, tool)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return target


def _default_binary_name(pkg: str) -> str:
    """What `go build -o dir/` calls a command: its last path element, skipping /vN."""
    parts = pkg.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        return parts[-2]
    return parts[-1]


def _rename_packages(staging: Path, tool: GoTool) -> None:
    for name, pkg in tool.packages.items():
        built = staging / _default_binary_name(pkg)
        if built.name != name:
            built.rename(staging / name)


def build_all(*, log: bool = True) -> dict[str, Path]:
    return {t.name: build(t, log=log) for t in ALL_TOOLS}
