"""The real node's processes, in start order, and the probes that say each is ready.

Each runs in the node's network namespace (see nodenet) or bridges into it: socat for
the API server, the registry and the dev Prometheus, which listen on the host's
loopback only; then containerd, the kubelet, kube-proxy, CoreDNS, and the node's
storage (see nodestorage). realnode starts them in this order and waits for each.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from modelsmith.devcluster import nodenet, nodestorage, tools
from modelsmith.devcluster.components import NODE_IP, Ports
from modelsmith.devcluster.nodeconfig import LABEL, NODE_NAME, NodePaths
from modelsmith.devcluster.processes import NodeProcess


def node_processes(
    cluster_home: Path, paths: NodePaths, ports: Ports, files: dict[str, Path]
) -> list[NodeProcess]:
    """The node's processes in start order (each needs the ones before it)."""
    p, api, reg = paths, ports.apiserver, ports.registry
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
            lambda: node_port_open(api),
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
            lambda: node_port_open(5000),
        ),
        # The dev Prometheus, for the operator pod's canary analyses: on the node's
        # address (the Service `prometheus` of the dev namespace leads there).
        NodeProcess(
            "prometheus-bridge",
            [
                socat,
                f"UNIX-LISTEN:{p.prometheus_sock},fork,unlink-early,mode=600",
                f"TCP:127.0.0.1:{ports.prometheus}",
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
            lambda: node_port_open(prom, NODE_IP),
        ),
        NodeProcess(
            "containerd",
            nodenet.nsenter([containerd, f"--config={files['containerd']}"]),
            containerd,
            lambda: ctr(paths, "version").returncode == 0,
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
            services_programmed,
        ),
        NodeProcess(
            "coredns",
            nodenet.nsenter([coredns, "-conf", str(files["coredns"])]),
            coredns,
            lambda: node_http_ok("http://127.0.0.1:10255/ready"),
        ),
        *nodestorage.processes(cluster_home, ports, files["provisioner-kubeconfig"]),
    ]


# -- probes inside the namespace -----------------------------------------------------


# Probes inside the namespace.


def in_node(code: str) -> bool:
    done = subprocess.run(
        nodenet.nsenter([sys.executable, "-c", code]),
        capture_output=True,
        check=False,
        timeout=10,
    )
    return done.returncode == 0


def node_port_open(port: int, host: str = "127.0.0.1") -> bool:
    return in_node(f"import socket; socket.create_connection(({host!r}, {port}), 1).close()")


def node_http_ok(url: str) -> bool:
    return in_node(f"import urllib.request as u; u.urlopen({url!r}, timeout=2)")


def services_programmed() -> bool:
    done = subprocess.run(
        nodenet.nsenter(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"]),
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and "default/kubernetes" in done.stdout


def ctr(paths: NodePaths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", f"--address={paths.containerd_sock}", "--namespace=k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
