"""The real node's network namespace, and undoing everything the node did to the machine.

The kubelet refuses a loopback node IP and this kernel has no dummy interfaces, so the
node lives in its own network namespace behind a veth (host 10.250.0.1, node
10.250.0.2). Its default route is `unreachable`: nothing a pod sends can leave the
machine. Host routes send pod and Service addresses into the namespace, and kwok's fake
addresses are made unreachable so a stray connection to a fake pod or node never goes
out of the VM through the default route.

The kubelet also rewrites global kernel settings at start (vm.overcommit_memory,
kernel.panic, kernel.panic_on_oops: the last makes any oops a reboot). The values from
before are recorded once and put back right after it starts, and again on `down`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from modelsmith.devcluster.components import NODE_IP
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodeconfig import (
    BRIDGE_IP,
    HOST_IP,
    KWOK_NODE_IP,
    KWOK_POD_CIDR,
    LINK_CIDR,
    POD_CIDR,
    SERVICE_CIDR,
)

NETNS = "modelsmith-node"
HOST_LINK = "ms-host0"
NODE_LINK = "ms-node0"
NETNS_PATH = Path("/run/netns") / NETNS

GUARDED_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
"""Global settings the kubelet's container manager writes when it starts."""

HOST_ROUTES = (
    ("via", POD_CIDR),
    ("via", SERVICE_CIDR),
    ("unreachable", KWOK_POD_CIDR),
    ("unreachable", f"{KWOK_NODE_IP}/32"),
)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise DevClusterError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def netns_exists() -> bool:
    return NETNS_PATH.exists() and _ip("netns", "pids", NETNS, check=False).returncode == 0


def nsenter(argv: list[str]) -> list[str]:
    """Run ``argv`` in the node's namespace; nsenter, since `ip netns exec` remounts /sys
    and so hides /sys/fs/cgroup from the kubelet."""
    return ["nsenter", f"--net={NETNS_PATH}", "--", *argv]


def setup() -> None:
    """Create the namespace, the veth and the routes; a no-op for what already exists."""
    if not netns_exists():
        teardown_network()
        _ip("netns", "add", NETNS)
        _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK)
        _ip("link", "set", NODE_LINK, "netns", NETNS)
        _ip("addr", "add", f"{HOST_IP}/{LINK_CIDR}", "dev", HOST_LINK)
        _ip("link", "set", HOST_LINK, "up")
        _ip("-n", NETNS, "addr", "add", f"{NODE_IP}/{LINK_CIDR}", "dev", NODE_LINK)
        _ip("-n", NETNS, "link", "set", NODE_LINK, "up")
        _ip("-n", NETNS, "link", "set", "lo", "up")
        _ip("-n", NETNS, "link", "add", "cni0", "type", "bridge")
        _ip("-n", NETNS, "addr", "add", f"{BRIDGE_IP}/24", "dev", "cni0")
        _ip("-n", NETNS, "link", "set", "cni0", "up")
        _ip("-n", NETNS, "route", "add", "unreachable", "default")
        # A client in the namespace itself (the kubelet's probes, CoreDNS) reaching a
        # ClusterIP: the route lookup happens before kube-proxy's OUTPUT DNAT.
        _ip("-n", NETNS, "route", "add", SERVICE_CIDR, "dev", "cni0")
    for kind, cidr in HOST_ROUTES:
        if kind == "via":
            _ip("route", "replace", cidr, "via", NODE_IP)
        else:
            _ip("route", "replace", "unreachable", cidr)


def teardown_network() -> None:
    """Delete the namespace (its veth, bridge, routes and iptables rules go with it)."""
    for kind, cidr in HOST_ROUTES:
        args = ("route", "del", cidr) if kind == "via" else ("route", "del", "unreachable", cidr)
        _ip(*args, check=False)
    if NETNS_PATH.exists():
        _ip("netns", "del", NETNS, check=False)
    _ip("link", "del", HOST_LINK, check=False)


def leftover_network() -> list[str]:
    """What of the node's network is still on the machine (for `down`'s check)."""
    found: list[str] = []
    if NETNS_PATH.exists():
        found.append(f"network namespace {NETNS}")
    if _ip("link", "show", HOST_LINK, check=False).returncode == 0:
        found.append(f"link {HOST_LINK}")
    routes = _ip("route", "show", check=False).stdout + _ip("route", "show", "table", "all").stdout
    for _kind, cidr in HOST_ROUTES:
        if cidr.removesuffix("/32") in routes:
            found.append(f"route {cidr}")
    return found


# -- kernel settings ---------------------------------------------------------------------


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls(names: Iterable[str] = GUARDED_SYSCTLS) -> dict[str, str]:
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def record_sysctls(saved: Path) -> dict[str, str]:
    """The values from before the node first ran: kept on disk until `down` restores them."""
    if saved.is_file():
        recorded: dict[str, str] = json.loads(saved.read_text())
        return recorded
    values = read_sysctls()
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(values, indent=2))
    return values


def restore_sysctls(values: dict[str, str]) -> list[str]:
    """Put back every value that differs; the names that had to be restored."""
    changed = []
    for name, want in values.items():
        path = _sysctl_path(name)
        try:
            if path.read_text().strip() != want:
                path.write_text(want)
                changed.append(name)
        except OSError as exc:
            raise DevClusterError(f"cannot restore {name}={want}: {exc}") from exc
    return changed


def guard_sysctls(values: dict[str, str], seconds: float) -> list[str]:
    """Restore the recorded values as soon as the starting kubelet changes them."""
    changed: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        changed.update(restore_sysctls(values))
        time.sleep(0.05)
    return sorted(changed)


# -- mounts and cgroups ------------------------------------------------------------------


def mounts_under(roots: Iterable[Path]) -> list[str]:
    """Mount points below ``roots``, deepest first (as /proc/self/mountinfo lists them)."""
    prefixes = [str(r).rstrip("/") for r in roots]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_all(roots: Iterable[Path]) -> None:
    roots = list(roots)
    for _ in range(5):  # bind mounts stack: the kubelet mounts its root dir onto itself
        points = mounts_under(roots)
        if not points:
            return
        for point in points:
            done = subprocess.run(["umount", point], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_under(roots)
    if left:
        raise DevClusterError(f"could not unmount: {', '.join(left)}")


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAMES = ("kubepods", "kubepods.slice")


def node_cgroups() -> list[Path]:
    """The kubelet's pod cgroups in every hierarchy (v1 controllers and the unified one)."""
    found: list[Path] = []
    if not CGROUP_ROOT.is_dir():
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        for name in CGROUP_NAMES:
            top = hierarchy / name
            if top.is_dir():
                found += [Path(d) for d, _subs, _files in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_cgroups() -> list[str]:
    """rmdir depth first; the paths that could not go (a process still in them)."""
    stuck: list[str] = []
    for _ in range(20):
        stuck = []
        for path in node_cgroups():
            try:
                path.rmdir()
            except OSError:
                stuck.append(str(path))
        if not stuck:
            return []
        time.sleep(0.25)
    return stuck
