"""`down` of the real node leaves the machine as it found it; `up` brings the node back.

Checked from the machine's side, not from the node's own bookkeeping: /proc for
processes, mountinfo for mounts, `ip` for namespaces, links and routes, the cgroup
hierarchies, and the kernel settings the kubelet rewrites.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from modelsmith.devcluster import nodenet
from modelsmith.devcluster.cluster import DevCluster
from tests.e2e.conftest import pod_on_node, wait_phase

pytestmark = pytest.mark.integration

NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "containerd", "containerd-shim-runc-v2")


def _node_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = (proc / "exe").readlink().name
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if exe in NODE_BINARIES or (exe == "socat" and "modelsmith-node" in cmdline):
            found.append(f"{proc.name} {cmdline[:120]}")
    return found


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def test_down_leaves_nothing_behind_and_up_restores_the_node(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, pushed: dict[str, str]
) -> None:
    script = "import time; time.sleep(600)"
    core.create_namespaced_pod(
        namespace, pod_on_node("busy", pushed["python-base"], ["-c", script], command=["python3"])
    )
    wait_phase(core, namespace, "busy", {"Running"})
    before = json.loads(dev_cluster.node.saved_sysctls.read_text())
    assert _node_processes(), "the node's processes are visible while it runs"

    dev_cluster.node.down(log=lambda _m: None)

    assert _node_processes() == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(dev_cluster.node.paths.home) not in mounts
    assert "/run/netns/cni-" not in mounts
    assert "/run/modelsmith-node" not in mounts
    assert nodenet.NETNS not in _ip("netns", "list")
    assert nodenet.HOST_LINK not in _ip("link", "show")
    routes = _ip("route", "show", "table", "all")
    for cidr in ("10.245.0.0/24", "10.96.0.0/16", "10.244.0.0/16"):
        assert cidr not in routes
    assert nodenet.node_cgroups() == []
    assert nodenet.read_sysctls() == before
    assert not Path("/run/modelsmith-node").exists()

    dev_cluster.up(log=lambda _m: None)
    dead = [proc.name for proc, alive in dev_cluster.node.running() if not alive]
    assert not dead, f"not running right after up: {dead}"
    wait_phase(core, namespace, "busy", {"Running", "Failed", "Succeeded"}, timeout=120)
