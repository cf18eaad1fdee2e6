"""Bring the local control plane up, report on it, and take it down.

The processes are the ones a kubeadm cluster runs, started directly with envtest-like
flags on loopback: etcd, kube-apiserver (TLS, client certificates, Node+RBAC
authorization), kube-controller-manager (Jobs, garbage collection, service accounts)
and kube-scheduler. kwok stands in for the kubelets. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import yaml

from modelsmith.devcluster import pki, tools
from modelsmith.devcluster.components import (
    Component,
    Ports,
    components,
    stages_bytes,
    stages_path,
)
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodes import DEFAULT_NODES, node_manifest
from modelsmith.devcluster.processes import (
    Running,
    StateFile,
    is_alive,
    port_in_use,
    start,
    stop,
    tail,
)

DEFAULT_PORT_BASE = 16440
DEFAULT_TIMEOUT = 90.0
CLUSTER_NAME = "modelsmith-dev"


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int
    port: int
    running: bool
    healthy: bool


@dataclass(frozen=True)
class ClusterStatus:
    home: Path
    components: list[ComponentStatus]
    server: str

    @property
    def running(self) -> bool:
        return bool(self.components) and all(c.running and c.healthy for c in self.components)

    @property
    def stopped(self) -> bool:
        return not any(c.running for c in self.components)


_Number = TypeVar("_Number", int, float)


def _env_number(name: str, default: _Number, kind: type[_Number]) -> _Number:
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


class DevCluster:
    """One local cluster, identified by its home directory and its ports."""

    def __init__(self, home: Path, ports: Ports, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.home = home
        self.ports = ports
        self.timeout = timeout
        self.state = StateFile(home / "state.json")

    @classmethod
    def from_env(cls) -> DevCluster:
        """Configured by MODELSMITH_DEV_HOME, MODELSMITH_DEV_PORT_BASE, MODELSMITH_DEV_TIMEOUT."""
        return cls(
            default_home(),
            Ports.from_base(_env_number("MODELSMITH_DEV_PORT_BASE", DEFAULT_PORT_BASE, int)),
            _env_number("MODELSMITH_DEV_TIMEOUT", DEFAULT_TIMEOUT, float),
        )

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        return self.home / "bin"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def _pki(self) -> pki.PKIPaths:
        return pki.PKIPaths(self.home / "pki")

    def run_kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the cluster's own kubectl (the one built with it) as the admin user."""
        argv = [str(tools.binary(tools.KUBERNETES, "kubectl")), f"--kubeconfig={self.kubeconfig}"]
        return subprocess.run(
            [*argv, *args], input=stdin, capture_output=True, text=True, check=False
        )

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """kubectl's stdout; a failure is a DevClusterError with its stderr (if ``check``)."""
        proc = self.run_kubectl(*args, stdin=stdin)
        if check and proc.returncode != 0:
            raise DevClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    # -- up -----------------------------------------------------------------------------

    def up(self, log: Callable[[str], None] = print) -> bool:
        """Start the cluster; return False when it was already running and was reused."""
        for tool in tools.ALL_TOOLS:
            tools.build(tool)
        self._link_binaries()
        current = self.status()
        same = [p.argv for p in self.state.load()] == [c.argv for c in self._components()]
        if current.running and same:
            log(f"dev cluster already running at {self.server} (home {self.home}); reusing it")
            return False
        if current.running:
            log("dev cluster runs other binaries or flags than this checkout's; restarting it")
        elif not current.stopped:
            log("dev cluster is partly running; stopping what is left and starting afresh")
        self.down(log=lambda _msg: None)
        self._check_ports_free()
        self._prepare_home()
        started: list[Running] = []
        try:
            for component in self._components():
                log(f"starting {component.name} on 127.0.0.1:{component.port}")
                proc = start(
                    component.name,
                    component.argv,
                    component.port,
                    self.home / "logs" / f"{component.name}.log",
                )
                started.append(proc)
                self.state.save(started)
                self._wait_healthy(proc, component)
            self._register_nodes()
            self._wait_until(self._nodes_ready, "the kwok nodes to become Ready", started[-1])
            self._wait_until(
                self._default_service_account, "the default service account", started[0]
            )
        except BaseException:
            for proc in reversed(started):
                stop(proc)
            self.state.clear()
            raise
        log(f"dev cluster up: {self.server}; kubeconfig {self.kubeconfig}")
        return True

    def _link_binaries(self) -> None:
        """Put every built tool in one folder, so `dev env` can prepend it to PATH."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for tool in tools.ALL_TOOLS:
            for name in tool.packages:
                link = self.bin_dir / name
                link.unlink(missing_ok=True)
                link.symlink_to(tools.binary(tool, name))

    def _check_ports_free(self) -> None:
        taken = [f"{p} ({c})" for c, p in self.ports.by_component().items() if port_in_use(p)]
        if taken:
            raise DevClusterError(
                f"port(s) already in use on 127.0.0.1: {', '.join(taken)}. Stop whatever "
                "holds them (`ss -ltnp`) or choose other ports with "
                "MODELSMITH_DEV_PORT_BASE=<port> (7 consecutive ports are used)"
            )

    def _prepare_home(self) -> None:
        for sub in ("pki", "etcd", "logs"):
            shutil.rmtree(self.home / sub, ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        paths = pki.generate(self.home / "pki")
        self._write_kubeconfig(paths)
        stages_path(self.home).write_bytes(stages_bytes())

    def _write_kubeconfig(self, paths: pki.PKIPaths) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CLUSTER_NAME,
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(paths.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": pki.ADMIN_USER,
                    "user": {
                        "client-certificate-data": b64(paths.admin_cert),
                        "client-key-data": b64(paths.admin_key),
                    },
                }
            ],
            "contexts": [
                {"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": pki.ADMIN_USER}}
            ],
            "current-context": CLUSTER_NAME,
        }
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.chmod(0o600)
        tmp.replace(self.kubeconfig)

    def _components(self) -> list[Component]:
        return components(self.home, self.ports, self._pki, self.kubeconfig)

    # -- health -------------------------------------------------------------------------

    def _healthy(self, component: Component) -> bool:
        verify: ssl.SSLContext | bool = False  # self-signed serving certs of kcm/scheduler
        if component.authenticated:
            certs = self._pki
            if not certs.ca_cert.exists():
                return False
            verify = ssl.create_default_context(cafile=str(certs.ca_cert))
            verify.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
        try:
            resp = httpx.get(component.health_url, timeout=2.0, verify=verify)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def _wait_healthy(self, proc: Running, component: Component) -> None:
        self._wait_until(lambda: self._healthy(component), f"{proc.name} to become healthy", proc)

    def _wait_until(self, check: Callable[[], bool], what: str, proc: Running) -> None:
        """Poll ``check``; fail fast if ``proc`` dies, fail clearly on the deadline."""
        deadline = time.monotonic() + self.timeout
        while True:
            if check():
                return
            if not is_alive(proc):
                raise DevClusterError(
                    f"{proc.name} exited while waiting for {what}; last lines of "
                    f"{proc.log}:\n{tail(proc.log)}"
                )
            if time.monotonic() > deadline:
                raise DevClusterError(
                    f"timed out after {self.timeout:.0f}s waiting for {what} "
                    f"(raise MODELSMITH_DEV_TIMEOUT to wait longer); last lines of "
                    f"{proc.log}:\n{tail(proc.log)}"
                )
            time.sleep(0.25)

    def _register_nodes(self) -> None:
        items = [node_manifest(shape) for shape in DEFAULT_NODES]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        self.kubectl(
            "apply", "--server-side", "--field-manager=modelsmith-dev", "-f", "-", stdin=doc
        )

    def _nodes_ready(self) -> bool:
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
        ready = {
            n["metadata"]["name"]
            for n in nodes
            for c in n.get("status", {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        }
        return all(shape.name in ready for shape in DEFAULT_NODES)

    def _default_service_account(self) -> bool:
        out = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return "default" in out

    # -- status, down, env --------------------------------------------------------------

    def status(self) -> ClusterStatus:
        procs = self.state.load()
        by_name = {c.name: c for c in self._components_or_empty()}
        components = []
        for proc in procs:
            alive = is_alive(proc)
            component = by_name.get(proc.name)
            components.append(
                ComponentStatus(
                    name=proc.name,
                    pid=proc.pid,
                    port=proc.port,
                    running=alive,
                    healthy=alive and component is not None and self._healthy(component),
                )
            )
        return ClusterStatus(home=self.home, components=components, server=self.server)

    def _components_or_empty(self) -> list[Component]:
        """Health checks rebuild argv, which needs built binaries; none built, none known."""
        try:
            return self._components()
        except DevClusterError:
            return []

    def down(self, log: Callable[[str], None] = print) -> list[str]:
        """Stop every recorded process (newest first) and make sure its port is free."""
        procs = self.state.load()
        stopped = []
        for proc in reversed(procs):
            if is_alive(proc):
                log(f"stopping {proc.name} (pid {proc.pid})")
                stop(proc)
                stopped.append(proc.name)
        self.state.clear()
        deadline = time.monotonic() + 10
        held = [p for p in procs if port_in_use(p.port)]
        while held and time.monotonic() < deadline:
            time.sleep(0.2)
            held = [p for p in held if port_in_use(p.port)]
        if held:
            raise DevClusterError(
                "stopped the dev cluster but these ports are still taken: "
                + ", ".join(f"{p.port} ({p.name})" for p in held)
            )
        for sub in ("etcd", "pki"):
            shutil.rmtree(self.home / sub, ignore_errors=True)
        self.kubeconfig.unlink(missing_ok=True)
        if not stopped:
            log("dev cluster was not running")
        return stopped

    def env(self) -> str:
        return f'export KUBECONFIG={self.kubeconfig}\nexport PATH="{self.bin_dir}:$PATH"\n'
