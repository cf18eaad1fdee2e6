"""One real node beside kwok's fake ones: a kubelet that runs containers.

containerd (Debian's, with runc) serves the CRI; the kubelet and kube-proxy are built
from the same Kubernetes module as the control plane; CoreDNS answers cluster names.
All of it runs in the node's own network namespace (see nodenet). The API server and
the image registry listen on the host's loopback only; socat bridges them into the
namespace over UNIX sockets, so nothing listens on a routable address.

Like the control plane, the node keeps its state across `down`/`up`: containerd's
images and the kubelet's directory stay under the dev home, and `up` restarts only
what is not running. `down` removes everything that only lives while the node runs
(processes, containers, mounts, the namespace, routes, pod cgroups) and restores the
kernel settings the kubelet changed; `down(purge=True)` also deletes the images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from modelsmith.devcluster import nodenet, nodestorage, nodeteardown, pauseimage, pki, tools
from modelsmith.devcluster.components import Ports
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodeconfig import (
    NODE_NAME,
    PAUSE_IMAGE,
    REGISTRY_IN_NODE,
    NodePaths,
    cni_conflist,
    containerd_toml,
    corefile,
    kube_proxy_yaml,
    kubelet_yaml,
    registry_hosts_toml,
)
from modelsmith.devcluster.nodeprocesslist import ctr, node_processes
from modelsmith.devcluster.processes import (
    NodeProcess,
    Running,
    StateFile,
    is_alive,
    start,
    stop,
    wait_until,
)

RUN_DIR = Path("/run/modelsmith-node")
COREDNS_USER = "modelsmith:coredns"
REQUIRED = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "socat": "socat",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "iptables": "iptables",
    "umount": "mount",
}
DEBIAN_PACKAGES = "containerd runc containernetworking-plugins iptables socat catatonit"


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> None:
    """Leave an unchanged file alone: kube-proxy exits when its config file is written
    ("content of the proxy server's configuration file was updated")."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


class NodeUnavailableError(DevClusterError):
    """The machine cannot run the real node; the control plane and kwok still work."""


def preflight() -> list[str]:
    """Why this machine cannot run the node, one reason per line (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (network namespaces, mounts, cgroups)")
    missing = sorted({pkg for cmd, pkg in REQUIRED.items() if shutil.which(cmd) is None})
    if not Path("/usr/lib/cni/bridge").is_file():
        missing.append("containernetworking-plugins")
    if not pauseimage.CATATONIT.is_file():
        missing.append("catatonit")
    if missing:
        problems.append(
            f"missing Debian packages: {' '.join(sorted(set(missing)))} "
            f"(apt-get install {DEBIAN_PACKAGES})"
        )
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlay filesystem (containerd's snapshotter)")
    for controller in ("cpu", "memory", "pids"):
        if (
            not (nodenet.CGROUP_ROOT / controller).is_dir()
            and not (nodenet.CGROUP_ROOT / "cgroup.controllers").is_file()
        ):
            problems.append(f"cgroup controller {controller} is not mounted")
    return problems


class RealNode:
    def __init__(self, cluster_home: Path, ports: Ports, certs: pki.PKIPaths) -> None:
        self.cluster_home = cluster_home
        self.paths = NodePaths(cluster_home / "node", RUN_DIR)
        self.ports = ports
        self.certs = certs
        self.state = StateFile(self.paths.home / "state.json")
        self.created = self.paths.home / "created-paths.json"
        self.saved_sysctls = self.paths.home / "sysctls-before.json"

    # -- what runs ----------------------------------------------------------------------

    def _kubeconfig(self, user: str, cert: Path, key: Path) -> Path:
        path = self.paths.config / f"{user}.kubeconfig"
        server = f"https://127.0.0.1:{self.ports.apiserver}"
        config = pki.kubeconfig(
            "dev", server, self.certs.ca_cert, user=user, cert=cert, key=key, embed=False
        )
        _write_if_changed(path, json.dumps(config, indent=2), mode=0o600)
        return path

    def _write_configs(self) -> dict[str, Path]:
        p = self.paths
        for folder in (
            p.config,
            p.cni_conf,
            p.pod_logs,
            p.kubelet_root,
            p.containerd_root,
            p.hosts_dir / REGISTRY_IN_NODE,
            p.run,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        files = {
            "containerd": p.config / "containerd.toml",
            "kubelet": p.config / "kubelet.yaml",
            "kube-proxy": p.config / "kube-proxy.yaml",
            "coredns": p.config / "Corefile",
        }
        kubelet_kc = self._kubeconfig(
            "kubelet",
            *pki.client_pair(self.certs, "kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
        )
        proxy_kc = self._kubeconfig(
            "kube-proxy", *pki.client_pair(self.certs, "kube-proxy", "system:kube-proxy")
        )
        dns_kc = self._kubeconfig("coredns", *pki.client_pair(self.certs, "coredns", COREDNS_USER))
        _write_if_changed(files["containerd"], containerd_toml(p))
        _write_if_changed(files["kubelet"], kubelet_yaml(p, self.certs.ca_cert))
        _write_if_changed(files["kube-proxy"], kube_proxy_yaml(proxy_kc))
        _write_if_changed(files["coredns"], corefile(dns_kc, "dev"))
        _write_if_changed(p.cni_conf / "10-modelsmith.conflist", cni_conflist(p))
        _write_if_changed(p.hosts_dir / REGISTRY_IN_NODE / "hosts.toml", registry_hosts_toml())
        files["kubelet-kubeconfig"] = kubelet_kc
        files["provisioner-kubeconfig"] = self._kubeconfig(
            "provisioner",
            *pki.client_pair(self.certs, "provisioner", nodestorage.PROVISIONER_USER),
        )
        return files

    def processes(self, files: dict[str, Path]) -> list[NodeProcess]:
        """The node's processes in start order (each needs the ones before it)."""
        return node_processes(self.cluster_home, self.paths, self.ports, files)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ctr(self.paths, *args)

    def up(self, kubectl: Callable[..., str], timeout: float, log: Callable[[str], None]) -> bool:
        """Start what of the node is not running; False when all of it already ran."""
        problems = preflight()
        if problems:
            raise NodeUnavailableError("; ".join(problems))
        for tool in (tools.KUBE_NODE, tools.COREDNS, tools.PROVISIONER, tools.OBJECT_STORE):
            tools.build(tool)
        self._remember_machine_paths()
        files = self._write_configs()
        self._apply_addons(kubectl)  # what CoreDNS, the store and the provisioner need
        nodenet.setup()
        sysctls = nodenet.record_sysctls(self.saved_sysctls)
        recorded = {r.name: r for r in self.state.load()}
        running: list[Running] = []
        any_started = False
        for proc in self.processes(files):
            old = recorded.get(proc.name)
            if old is not None and is_alive(old) and old.argv == proc.argv:
                running.append(old)
                continue
            if old is not None and is_alive(old):
                log(f"restarting {proc.name}: this checkout runs it with other flags")
                stop(old)
            log(f"starting {proc.name} (real node)")
            log_path = self.paths.home / "logs" / f"{proc.name}.log"
            started = start(proc.name, proc.argv, 0, log_path, exe=proc.exe, env=proc.env)
            running.append(started)
            any_started = True
            self.state.save(running)
            if proc.name == "kubelet":
                changed = nodenet.guard_sysctls(sysctls, seconds=3.0)
                if changed:
                    log(f"restored kernel settings the kubelet changed: {', '.join(changed)}")
            wait_until(
                proc.ready, f"{proc.name} to become ready", started, timeout, NodeUnavailableError
            )
            if proc.name == "containerd":
                self._load_pause_image()
            if proc.name == "kubelet":
                wait_until(
                    lambda: self._node_ready(kubectl),
                    "the real node to become Ready",
                    started,
                    timeout,
                    NodeUnavailableError,
                )
                nodenet.restore_sysctls(sysctls)

        self.state.save(running)
        return any_started

    def _load_pause_image(self) -> None:
        if PAUSE_IMAGE in self._ctr("images", "ls", "-q").stdout.split():
            return
        archive = pauseimage.write_archive(self.paths.run / "pause.tar", PAUSE_IMAGE)
        done = self._ctr("images", "import", str(archive))
        archive.unlink(missing_ok=True)
        if done.returncode != 0:
            raise NodeUnavailableError(
                f"ctr images import of the pause image failed: {done.stderr}"
            )

    @staticmethod
    def _node_ready(kubectl: Callable[..., str]) -> bool:
        out = kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if not out:
            return False
        conditions = json.loads(out).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _apply_addons(self, kubectl: Callable[..., str]) -> None:
        """CoreDNS's read access (as kubeadm's system:coredns ClusterRole grants it), the
        default StorageClass, the provisioner's RBAC and the object store's Service."""
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": COREDNS_USER},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": COREDNS_USER},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": COREDNS_USER,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
            ],
        }
        items = [role, binding, *nodestorage.manifests()]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        kubectl("apply", "--server-side", "--field-manager=modelsmith-dev", "-f", "-", stdin=doc)

    def _remember_machine_paths(self) -> None:
        """Which of the kubelet's fixed machine paths existed before the node first ran."""
        if self.created.is_file():
            return
        self.paths.home.mkdir(parents=True, exist_ok=True)
        ours = [str(p) for p in nodeteardown.MACHINE_PATHS if not p.exists()]
        self.created.write_text(json.dumps(ours))

    def has_traces(self) -> bool:
        """Something of the node may be on the machine (it ran, or a run crashed)."""
        return any(f.exists() for f in (self.state.path, self.saved_sysctls, self.created))

    # -- status ---------------------------------------------------------------------------

    def running(self) -> list[tuple[Running, bool]]:
        return [(r, is_alive(r)) for r in self.state.load()]

    # -- down -----------------------------------------------------------------------------

    def down(self, log: Callable[[str], None], *, purge: bool = False) -> list[str]:
        """Stop the node and remove what only lives while it runs; check nothing is left."""
        recorded = self.state.load()
        procs = {r.name: r for r in recorded}
        stopped: list[str] = []

        def halt(proc: Running) -> None:
            if is_alive(proc):
                log(f"stopping {proc.name} (pid {proc.pid})")
                stop(proc)
                stopped.append(proc.name)

        # What uses the containers first, then the containers, then everything else the
        # state names in reverse start order (containerd, the bridges): a process added
        # to `processes` is stopped without being listed here.
        users = ("provisioner", "objectstore", "coredns", "kube-proxy", "kubelet")
        for name in users:
            if name in procs:
                halt(procs[name])
        if "containerd" in procs and is_alive(procs["containerd"]):
            nodeteardown.remove_containers(self.paths, procs["containerd"])
        for proc in reversed(recorded):
            if proc.name not in users:
                halt(proc)
        alive = [f"process {r.name} (pid {r.pid})" for r in recorded if is_alive(r)]
        self.state.clear()
        nodeteardown.kill_shims(self.paths)
        nodenet.unmount_all(
            [
                self.paths.kubelet_root,
                self.paths.containerd_root,
                self.paths.run,
                *nodeteardown.pod_netns(),
            ]
        )
        for path in nodeteardown.pod_netns():
            path.unlink(missing_ok=True)
        stuck = nodenet.remove_cgroups()
        nodenet.teardown_network()
        nodeteardown.remove_machine_paths(self.created)
        if self.saved_sysctls.is_file():
            restored = nodenet.restore_sysctls(json.loads(self.saved_sysctls.read_text()))
            if restored:
                log(f"restored kernel settings: {', '.join(restored)}")
            self.saved_sysctls.unlink()
        shutil.rmtree(self.paths.run, ignore_errors=True)
        if purge:
            shutil.rmtree(self.paths.home, ignore_errors=True)
        left = alive + self.leftovers() + [f"cgroup {s}" for s in stuck]
        if left:
            raise DevClusterError("the real node left behind: " + "; ".join(left))
        return stopped

    def leftovers(self) -> list[str]:
        """Anything of the node's still on the machine: processes, mounts, netns, routes."""
        return nodeteardown.leftovers(self.paths, self.state)
