"""Taking the real node down: what only lives while it runs, found and removed.

Containers and their shims, the pods' network namespaces, the kubelet's fixed machine
paths (when the node made them), and the check that nothing of the node is left on the
machine. realnode's `down` calls these in order, after it stopped the processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from modelsmith.devcluster import nodenet
from modelsmith.devcluster.nodeconfig import NodePaths
from modelsmith.devcluster.nodeprocesslist import ctr
from modelsmith.devcluster.processes import Running, StateFile, is_alive

MACHINE_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/lib/cni"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    nodenet.NETNS_PATH.parent,
)
"""Paths the kubelet and CNI use whatever their flags say; removed on `down` if we made them."""


def remove_containers(paths: NodePaths, containerd: Running) -> None:
    """Every container of the node, sandboxes included, so no shim outlives containerd.

    Gives up once containerd is gone (another `down`, a crash): each ctr call would
    then wait seconds on a dead socket, twenty tries per task; the shims and mounts
    left are removed by what follows in `down` either way."""
    tasks = ctr(paths, "tasks", "ls", "-q").stdout.split()
    for task in tasks:
        ctr(paths, "tasks", "kill", "--signal=SIGKILL", task)
    for task in tasks:
        for _ in range(20):
            if not is_alive(containerd):
                return
            if ctr(paths, "tasks", "rm", "-f", task).returncode == 0:
                break
            time.sleep(0.1)
    containers = ctr(paths, "containers", "ls", "-q").stdout.split()
    if containers:
        ctr(paths, "containers", "rm", *containers)


def shims(paths: NodePaths) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"containerd-shim" in cmdline[0] and str(paths.containerd_sock).encode() in (
                b" ".join(cmdline)
            ):
                pids.append(int(proc.name))
    return pids


def kill_shims(paths: NodePaths) -> None:
    for pid in shims(paths):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while shims(paths) and time.monotonic() < deadline:
        time.sleep(0.1)


def pod_netns() -> list[Path]:
    """The pods' network namespaces (CNI names them cni-<uuid>; no other CNI runs here)."""
    root = Path("/run/netns")
    return sorted(root.glob("cni-*")) if root.is_dir() else []


def remove_machine_paths(created: Path) -> None:
    if not created.is_file():
        return
    for raw in json.loads(created.read_text()):
        path = Path(raw)
        if path == nodenet.NETNS_PATH.parent and path.is_dir() and any(path.iterdir()):
            continue  # another program's namespaces live there now: leave it
        nodenet.unmount_all([path])
        shutil.rmtree(path, ignore_errors=True)
    created.unlink()


def leftovers(paths: NodePaths, state: StateFile) -> list[str]:
    """Anything of the node's still on the machine: processes, mounts, netns, routes."""
    left = [f"process {r.name} (pid {r.pid})" for r in state.load() if is_alive(r)]
    left += [f"shim pid {pid}" for pid in shims(paths)]
    left += [
        f"mount {m}"
        for m in nodenet.mounts_under(
            [
                paths.kubelet_root,
                paths.containerd_root,
                paths.run,
                *MACHINE_PATHS[:-1],
                nodenet.NETNS_PATH,
            ]
        )
    ]
    left += [f"pod netns {p.name}" for p in pod_netns()]
    left += [f"cgroup {c}" for c in nodenet.node_cgroups()]
    left += nodenet.leftover_network()
    return left
