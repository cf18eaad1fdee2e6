"""The real node's files: what the recipe found this VM needs, checked without a node."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

from modelsmith.devcluster import nodenet, pauseimage
from modelsmith.devcluster.components import NODE_IP
from modelsmith.devcluster.nodeconfig import (
    KWOK_POD_CIDR,
    POD_CIDR,
    TAINT_KEY,
    NodePaths,
    cni_conflist,
    containerd_toml,
    corefile,
    kube_proxy_yaml,
    kubelet_yaml,
)

PATHS = NodePaths(Path("/home/dev/node"), Path("/run/ms"))


def test_containerd_restricts_oom_score_and_keeps_to_its_own_paths() -> None:
    config = tomllib.loads(containerd_toml(PATHS))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE: -998 fails
    assert config["root"].startswith("/home/dev/node")
    assert config["grpc"]["address"] == "/run/ms/containerd.sock"
    assert cri["cni"]["conf_dir"] == "/home/dev/node/cni"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False


def test_pod_network_is_apart_from_kwoks_fake_addresses() -> None:
    conf = json.loads(cni_conflist(PATHS))
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["ranges"][0][0]["subnet"] == POD_CIDR != KWOK_POD_CIDR
    assert ipam["dataDir"].startswith("/run/ms")  # not /var/lib/cni: gone with the node


def test_kubelet_never_evicts_for_disk_and_is_tainted() -> None:
    config = json.loads(kubelet_yaml(PATHS, Path("/pki/ca.crt")))
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["address"] == NODE_IP
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert set(config["evictionHard"].values()) == {"0%"}
    assert config["registerWithTaints"] == [
        {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    ]
    assert config["resolvConf"] == ""  # pods never get the machine's resolver
    assert config["clusterDNS"] == [NODE_IP]


def test_kube_proxy_leaves_conntrack_alone() -> None:
    config = json.loads(kube_proxy_yaml(Path("/k.kubeconfig")))
    assert config["mode"] == "iptables"  # no IPVS in this kernel
    assert config["conntrack"]["maxPerCore"] == 0  # a child netns cannot set the table size


def test_coredns_answers_cluster_names_only() -> None:
    text = corefile(Path("/dns.kubeconfig"), "dev")
    assert "forward" not in text
    assert f"bind {NODE_IP}" in text
    assert "kubernetes cluster.local" in text


def test_pause_image_is_reproducible(tmp_path: Path) -> None:
    binary = tmp_path / "catatonit"
    binary.write_bytes(b"\x7fELF fake")
    one = pauseimage.write_archive(tmp_path / "a.tar", "localhost/x:1", binary)
    two = pauseimage.write_archive(tmp_path / "b.tar", "localhost/x:1", binary)
    assert one.read_bytes() == two.read_bytes()
    with tarfile.open(one) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        names = tar.getnames()
    manifest = index["manifests"][0]
    assert manifest["annotations"]["io.containerd.image.name"] == "localhost/x:1"
    assert f"blobs/sha256/{manifest['digest'].split(':')[1]}" in names


def test_mounts_are_found_deepest_first(tmp_path: Path, monkeypatch: object) -> None:
    points = nodenet.mounts_under([Path("/proc")])
    assert "/proc" in points
    depths = [p.count("/") for p in points]
    assert depths == sorted(depths, reverse=True)


def test_sysctls_are_recorded_once(tmp_path: Path) -> None:
    saved = tmp_path / "sysctls.json"
    first = nodenet.record_sysctls(saved)
    saved.write_text(json.dumps({**first, "kernel.panic": "99"}))
    assert nodenet.record_sysctls(saved)["kernel.panic"] == "99"
