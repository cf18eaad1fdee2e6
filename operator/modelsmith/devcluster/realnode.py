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

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelsmith.devcluster import nodenet, nodestorage, pauseimage, pki, tools
from modelsmith.devcluster.components import NODE_IP, Ports
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodeconfig import (
    LABEL,
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
MACHINE_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/lib/cni"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    nodenet.NETNS_PATH.parent,
)
"""Paths the kubelet and CNI use whatever their flags say; removed on `down` if we made them."""
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
        p, api, reg = self.paths, self.ports.apiserver, self.ports.registry
        prom = nodestorage.PROMETHEUS_PORT
        socat = shutil.which("socat") or "socat"
        k8s = tools.KUBE_NODE
        kubelet = str(tools.binary(k8s, "kubelet"))
        proxy = str(tools.binary(k8s, "kube-proxy"))
        coredns = str(tools.binary(tools.COREDNS, "coredns"))
        containerd = shutil.which("containerd") or "containerd"
        return [
            NodeProcess(
                "api-bridge",
                [
                    socat,
                    f"UNIX-LISTEN:{p.api_sock},fork,unlink-early,mode=600",
                    f"TCP:127.0.0.1:{api}",
                ],
                socat,
                p.api_sock.exists,
            ),
            NodeProcess(
                "api-bridge-node",
                nodenet.nsenter(
                    [socat, f"TCP-LISTEN:{api},fork,reuseaddr", f"UNIX-CONNECT:{p.api_sock}"]
                ),
                socat,
                lambda: self._node_port_open(api),
            ),
            NodeProcess(
                "registry-bridge",
                [
                    socat,
                    f"UNIX-LISTEN:{p.registry_sock},fork,unlink-early,mode=600",
                    f"TCP:127.0.0.1:{reg}",
                ],
                socat,
                p.registry_sock.exists,
            ),
            NodeProcess(
                "registry-bridge-node",
                nodenet.nsenter(
                    [
                        socat,
                        "TCP-LISTEN:5000,bind=127.0.0.1,fork,reuseaddr",
                        f"UNIX-CONNECT:{p.registry_sock}",
                    ]
                ),
                socat,
                lambda: self._node_port_open(5000),
            ),
            # The dev Prometheus, for the operator pod's canary analyses: on the node's
            # address (the Service `prometheus` of the dev namespace leads there).
            NodeProcess(
                "prometheus-bridge",
                [
                    socat,
                    f"UNIX-LISTEN:{p.prometheus_sock},fork,unlink-early,mode=600",
                    f"TCP:127.0.0.1:{self.ports.prometheus}",
                ],
                socat,
                p.prometheus_sock.exists,
            ),
            NodeProcess(
                "prometheus-bridge-node",
                nodenet.nsenter(
                    [
                        socat,
                        f"TCP-LISTEN:{prom},bind={NODE_IP},fork,reuseaddr",
                        f"UNIX-CONNECT:{p.prometheus_sock}",
                    ]
                ),
                socat,
                lambda: self._node_port_open(prom, NODE_IP),
            ),
            NodeProcess(
                "containerd",
                nodenet.nsenter([containerd, f"--config={files['containerd']}"]),
                containerd,
                lambda: self._ctr("version").returncode == 0,
            ),
            NodeProcess(
                "kubelet",
                nodenet.nsenter(
                    [
                        kubelet,
                        f"--config={files['kubelet']}",
                        f"--kubeconfig={files['kubelet-kubeconfig']}",
                        f"--node-ip={NODE_IP}",
                        f"--hostname-override={NODE_NAME}",
                        f"--root-dir={p.kubelet_root}",
                        f"--cert-dir={p.kubelet_root / 'pki'}",
                        f"--node-labels={LABEL}=true",
                        "--v=1",
                    ]
                ),
                kubelet,
                lambda: True,  # Ready is the API's word, checked by the caller
            ),
            NodeProcess(
                "kube-proxy",
                nodenet.nsenter([proxy, f"--config={files['kube-proxy']}", "--v=1"]),
                proxy,
                self._services_programmed,
            ),
            NodeProcess(
                "coredns",
                nodenet.nsenter([coredns, "-conf", str(files["coredns"])]),
                coredns,
                lambda: self._node_http_ok("http://127.0.0.1:10255/ready"),
            ),
            *nodestorage.processes(self.cluster_home, self.ports, files["provisioner-kubeconfig"]),
        ]

    # -- probes inside the namespace -----------------------------------------------------

    def _in_node(self, code: str) -> bool:
        done = subprocess.run(
            nodenet.nsenter([sys.executable, "-c", code]),
            capture_output=True,
            check=False,
            timeout=10,
        )
        return done.returncode == 0

    def _node_port_open(self, port: int, host: str = "127.0.0.1") -> bool:
        return self._in_node(
            f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"
        )

    def _node_http_ok(self, url: str) -> bool:
        return self._in_node(f"import urllib.request as u; u.urlopen({url!r}, timeout=2)")

    def _services_programmed(self) -> bool:
        done = subprocess.run(
            nodenet.nsenter(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"]),
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode == 0 and "default/kubernetes" in done.stdout

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", f"--address={self.paths.containerd_sock}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    # -- up -------------------------------------------------------------------------------

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
        ours = [str(p) for p in MACHINE_PATHS if not p.exists()]
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
            self._remove_containers(procs["containerd"])
        for proc in reversed(recorded):
            if proc.name not in users:
                halt(proc)
        alive = [f"process {r.name} (pid {r.pid})" for r in recorded if is_alive(r)]
        self.state.clear()
        self._kill_shims()
        nodenet.unmount_all(
            [
                self.paths.kubelet_root,
                self.paths.containerd_root,
                self.paths.run,
                *self._pod_netns(),
            ]
        )
        for path in self._pod_netns():
            path.unlink(missing_ok=True)
        stuck = nodenet.remove_cgroups()
        nodenet.teardown_network()
        self._remove_machine_paths()
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

    def _remove_containers(self, containerd: Running) -> None:
        """Every container of the node, sandboxes included, so no shim outlives containerd.

        Gives up once containerd is gone (another `down`, a crash): each ctr call would
        then wait seconds on a dead socket, twenty tries per task; the shims and mounts
        left are removed by what follows in `down` either way."""
        tasks = self._ctr("tasks", "ls", "-q").stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "--signal=SIGKILL", task)
        for task in tasks:
            for _ in range(20):
                if not is_alive(containerd):
                    return
                if self._ctr("tasks", "rm", "-f", task).returncode == 0:
                    break
                time.sleep(0.1)
        containers = self._ctr("containers", "ls", "-q").stdout.split()
        if containers:
            self._ctr("containers", "rm", *containers)

    def _shims(self) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if b"containerd-shim" in cmdline[0] and str(
                    self.paths.containerd_sock
                ).encode() in (b" ".join(cmdline)):
                    pids.append(int(proc.name))
        return pids

    def _kill_shims(self) -> None:
        for pid in self._shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while self._shims() and time.monotonic() < deadline:
            time.sleep(0.1)

    @staticmethod
    def _pod_netns() -> list[Path]:
        """The pods' network namespaces (CNI names them cni-<uuid>; no other CNI runs here)."""
        root = Path("/run/netns")
        return sorted(root.glob("cni-*")) if root.is_dir() else []

    def _remove_machine_paths(self) -> None:
        if not self.created.is_file():
            return
        for raw in json.loads(self.created.read_text()):
            path = Path(raw)
            if path == nodenet.NETNS_PATH.parent and path.is_dir() and any(path.iterdir()):
                continue  # another program's namespaces live there now: leave it
            nodenet.unmount_all([path])
            shutil.rmtree(path, ignore_errors=True)
        self.created.unlink()

    def leftovers(self) -> list[str]:
        """Anything of the node's still on the machine: processes, mounts, netns, routes."""
        left = [f"process {r.name} (pid {r.pid})" for r in self.state.load() if is_alive(r)]
        left += [f"shim pid {pid}" for pid in self._shims()]
        left += [
            f"mount {m}"
            for m in nodenet.mounts_under(
                [
                    self.paths.kubelet_root,
                    self.paths.containerd_root,
                    self.paths.run,
                    *MACHINE_PATHS[:-1],
                    nodenet.NETNS_PATH,
                ]
            )
        ]
        left += [f"pod netns {p.name}" for p in self._pod_netns()]
        left += [f"cgroup {c}" for c in nodenet.node_cgroups()]
        left += nodenet.leftover_network()
        return left
