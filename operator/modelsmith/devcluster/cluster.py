"""Bring the local control plane up, report on it, and take it down.

The processes are the ones a kubeadm cluster runs, started directly with envtest-like
flags on loopback: etcd, kube-apiserver (TLS, client certificates, Node+RBAC
authorization), kube-controller-manager (Jobs, garbage collection, service accounts)
and kube-scheduler. kwok stands in for the kubelets. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelsmith.devcluster import imagestore, nodestorage, pki, prometheus, tools
from modelsmith.devcluster.clusterhome import (
    DEFAULT_PORT_BASE,
    DEFAULT_TIMEOUT,
    default_home,
    env_number,
    prepare_home,
)
from modelsmith.devcluster.clusterstatus import ClusterStatus, ComponentStatus, healthy
from modelsmith.devcluster.components import Component, Ports, components
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodeconfig import NODE_NAME, TAINT_KEY
from modelsmith.devcluster.nodes import DEFAULT_NODES, node_manifest
from modelsmith.devcluster.processes import (
    Running,
    StateFile,
    du_bytes,
    is_alive,
    port_in_use,
    start,
    stop,
    wait_until,
)
from modelsmith.devcluster.realnode import NodeUnavailableError, RealNode


class DevCluster:
    """One local cluster, identified by its home directory and its ports."""

    def __init__(
        self,
        home: Path,
        ports: Ports,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        real_node: bool = False,
        require_real_node: bool = False,
    ) -> None:
        self.home = home
        self.ports = ports
        self.timeout = timeout
        self.state = StateFile(home / "state.json")
        self.real_node = real_node or require_real_node
        self.require_real_node = require_real_node
        self.node = RealNode(home, ports, pki.PKIPaths(home / "pki"))

    @classmethod
    def from_env(cls) -> DevCluster:
        """Configured by MODELSMITH_DEV_HOME, MODELSMITH_DEV_PORT_BASE, MODELSMITH_DEV_TIMEOUT
        and MODELSMITH_DEV_REAL_NODE (``0``: kwok only; ``require``: fail when it cannot
        start, as CI does; anything else: start it when the machine can)."""
        mode = os.environ.get("MODELSMITH_DEV_REAL_NODE", "1").strip().lower()
        return cls(
            default_home(),
            Ports.from_base(env_number("MODELSMITH_DEV_PORT_BASE", DEFAULT_PORT_BASE, int)),
            env_number("MODELSMITH_DEV_TIMEOUT", DEFAULT_TIMEOUT, float),
            real_node=mode not in ("0", "false", "no", "off"),
            require_real_node=mode == "require",
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
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

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
        """Start what is not running; return False when everything already ran and was reused.

        Like minikube's stop/start, state survives: etcd's data, the certificates and the
        kubeconfig are kept, so a crashed or stopped component comes back to the same
        cluster (same CA, so running clients reconnect) with every object still there.
        Only a component whose binary or flags changed is restarted; only `down(purge=True)`
        wipes.
        """
        for tool in tools.ALL_TOOLS:
            tools.build(tool)
        self._link_binaries()
        wanted = self._components()
        recorded = {p.name: p for p in self.state.load()}
        reusable = {
            c.name
            for c in wanted
            if c.name in recorded and is_alive(recorded[c.name]) and recorded[c.name].argv == c.argv
        }
        if len(reusable) == len(wanted) and all(self._healthy(c) for c in wanted):
            if self._node_up(log):
                return True
            log(f"dev cluster already running at {self.server} (home {self.home}); reusing it")
            return False
        if reusable:
            log(
                "dev cluster is partly running; starting what is stopped "
                "(etcd data, certificates and kubeconfig kept)"
            )
        self._stop_unwanted(recorded, wanted, reusable, log)
        self._check_ports_free([c for c in wanted if c.name not in reusable])
        self._prepare_home()
        running: list[Running] = []
        started: list[Running] = []
        try:
            for component in wanted:
                if component.name in reusable:
                    proc = recorded[component.name]
                else:
                    log(f"starting {component.name} on 127.0.0.1:{component.port}")
                    proc = start(
                        component.name,
                        component.argv,
                        component.port,
                        self.home / "logs" / f"{component.name}.log",
                    )
                    started.append(proc)
                running.append(proc)
                self.state.save(running)
                self._wait_healthy(proc, component)
            self._register_nodes()
            self._wait_until(self._nodes_ready, "the kwok nodes to become Ready", running[-1])
            self._wait_until(
                self._default_service_account, "the default service account", running[0]
            )
            self._apply(prometheus.rbac_manifests())  # until then its discovery gets 403s
        except BaseException:
            for proc in reversed(started):
                stop(proc)
            self.state.save([p for p in running if p not in started])
            raise
        self._node_up(log)
        log(f"dev cluster up: {self.server}; kubeconfig {self.kubeconfig}")
        return True

    def _node_up(self, log: Callable[[str], None]) -> bool:
        """Start the real node; when it cannot start, say exactly why and go on with kwok."""
        if not self.real_node:
            return False
        try:
            started = self.node.up(self.kubectl, self.timeout, log)
        except NodeUnavailableError as exc:
            if self.require_real_node:
                raise
            log(f"real node not started (the control plane and kwok nodes still work): {exc}")
            return False
        if started:
            log(f"real node {NODE_NAME} Ready (pods that tolerate {TAINT_KEY} run there)")
        return started

    def _stop_unwanted(
        self,
        recorded: dict[str, Running],
        wanted: list[Component],
        reusable: set[str],
        log: Callable[[str], None],
    ) -> None:
        """Stop recorded processes that will not be reused (changed flags, or unknown now)."""
        flags = {c.name: c.argv for c in wanted}
        for proc in reversed(list(recorded.values())):
            if proc.name in reusable or not is_alive(proc):
                continue
            if proc.name in flags:
                log(f"restarting {proc.name}: this checkout runs it with other binaries or flags")
            else:
                log(f"stopping {proc.name}: this checkout does not run it")
            stop(proc)

    def _link_binaries(self) -> None:
        """Put every built tool in one folder, so `dev env` can prepend it to PATH."""
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for tool in tools.ALL_TOOLS:
            for name in tool.packages:
                link = self.bin_dir / name
                link.unlink(missing_ok=True)
                link.symlink_to(tools.binary(tool, name))

    def _check_ports_free(self, to_start: list[Component]) -> None:
        ports = self.ports.by_component()
        names = {c.name for c in to_start}
        if "etcd" in names:
            names.add("etcd (peer)")
        wanted = {c: p for c, p in ports.items() if c in names}
        # A process that just died (a crash) may still be closing its sockets: /proc
        # already says it is gone while the kernel has yet to release its port.
        deadline = time.monotonic() + 5
        taken = [f"{p} ({c})" for c, p in wanted.items() if port_in_use(p)]
        while taken and time.monotonic() < deadline:
            time.sleep(0.2)
            taken = [f"{p} ({c})" for c, p in wanted.items() if port_in_use(p)]
        if taken:
            raise DevClusterError(
                f"port(s) already in use on 127.0.0.1: {', '.join(taken)}. Stop whatever "
                "holds them (`ss -ltnp`) or choose other ports with "
                "MODELSMITH_DEV_PORT_BASE=<port> (10 consecutive ports are used)"
            )

    def _prepare_home(self) -> None:
        prepare_home(self.home, self.ports, self._pki, self.server, self.kubeconfig)

    def _components(self) -> list[Component]:
        return components(self.home, self.ports, self._pki, self.kubeconfig)

    # -- health -------------------------------------------------------------------------

    def _healthy(self, component: Component) -> bool:
        return healthy(component, self._pki)

    def _wait_healthy(self, proc: Running, component: Component) -> None:
        self._wait_until(lambda: self._healthy(component), f"{proc.name} to become healthy", proc)

    def _wait_until(self, check: Callable[[], bool], what: str, proc: Running) -> None:
        wait_until(check, what, proc, self.timeout)

    def _register_nodes(self) -> None:
        self._apply([node_manifest(shape) for shape in DEFAULT_NODES])

    def _apply(self, items: list[dict[str, Any]]) -> None:
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

    def down(self, log: Callable[[str], None] = print, *, purge: bool = False) -> list[str]:
        """Stop every recorded process (newest first); with ``purge``, also wipe all state.

        Without ``purge`` the etcd data, certificates and kubeconfig stay, so the next
        `up` brings back the same cluster with its objects.
        """
        stopped = self.node.down(log, purge=purge) if self.node.has_traces() else []
        if purge:
            shutil.rmtree(self.node.paths.home, ignore_errors=True)
        procs = self.state.load()
        for proc in reversed(procs):
            if is_alive(proc):
                log(f"stopping {proc.name} (pid {proc.pid})")
                stop(proc)
                stopped.append(proc.name)
        self.state.clear()
        deadline = time.monotonic() + 10
        held = [p for p in procs if p.port and port_in_use(p.port)]
        while held and time.monotonic() < deadline:
            time.sleep(0.2)
            held = [p for p in held if port_in_use(p.port)]
        if held:
            raise DevClusterError(
                "stopped the dev cluster but these ports are still taken: "
                + ", ".join(f"{p.port} ({p.name})" for p in held)
            )
        if not stopped:
            log("dev cluster was not running")
        if purge:
            for sub in ("etcd", "pki", "logs", "registry", "prometheus", "volumes", "objects"):
                shutil.rmtree(self.home / sub, ignore_errors=True)
            self.kubeconfig.unlink(missing_ok=True)
            nodestorage.credentials_path(self.home).unlink(missing_ok=True)
            log(f"dev cluster state removed from {self.home}")
        return stopped

    def env(self) -> str:
        """Shell exports for the cluster's clients; an operator run in that shell reads
        its canary metrics from the dev Prometheus."""
        return (
            f"export KUBECONFIG={self.kubeconfig}\n"
            f'export PATH="{self.bin_dir}:$PATH"\n'
            f"export MODELSMITH_PROMETHEUS_URL={self.prometheus_url}\n"
        )

    def disk_usage(self) -> dict[str, int]:
        """Bytes the images take in each of their three copies: buildah's build store (a
        cache, kept by `down --purge`), the dev registry and the node's containerd."""
        return {
            "build store": imagestore.store_bytes(),
            "registry": du_bytes(self.home / "registry"),
            "node": du_bytes(self.node.paths.containerd_root),
        }
