"""The local cluster's failure paths that need no running cluster."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from modelsmith.cli import main
from modelsmith.devcluster import tools
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.components import Component, Ports, components
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodes import DEFAULT_NODES, GPU_RESOURCE, node_manifest
from modelsmith.devcluster.pki import PKIPaths
from modelsmith.devcluster.processes import port_in_use


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_missing_go_is_a_clear_error(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DevClusterError, match="Go is not installed"):
        tools.build(tools.ETCD)
    assert main(["dev", "build"]) == 1
    assert "error: Go is not installed or not on PATH" in capsys.readouterr().err


def test_failed_build_reports_the_go_error_and_publishes_nothing(empty_cache: Path) -> None:
    broken = tools.GoTool(
        name="etcd", version="v0.0.0", packages={"etcd": "go.etcd.io/etcd/server/v3/nonexistent"}
    )
    with pytest.raises(DevClusterError, match=r"building etcd v0\.0\.0 failed") as exc:
        tools.build(broken, log=False)
    assert "nonexistent" in str(exc.value)
    assert not tools.is_built(broken)
    assert not any((empty_cache / "tools").iterdir())


def test_cache_key_changes_with_the_recipe() -> None:
    changed = tools.GoTool(
        name="etcd", version=tools.ETCD.version, packages=tools.ETCD.packages, tags=("x",)
    )
    assert changed.cache_key() != tools.ETCD.cache_key()
    assert tools.ETCD.cache_key().startswith(f"etcd-{tools.ETCD_VERSION}-")


def test_binary_names_follow_go_build(empty_cache: Path) -> None:
    assert tools._default_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert tools._default_binary_name("k8s.io/kubernetes/cmd/kubectl") == "kubectl"
    with pytest.raises(DevClusterError, match="modelsmith dev build"):
        tools.binary(tools.ETCD, "etcd")


def test_taken_port_is_named_in_the_error(tmp_path: Path, held_port: int) -> None:
    assert port_in_use(held_port)
    cluster = DevCluster(tmp_path, Ports.from_base(held_port - 3))  # apiserver = base + 3
    with pytest.raises(DevClusterError, match=rf"{held_port} \(kube-apiserver\)"):
        cluster._check_ports_free([Component("kube-apiserver", [], held_port, "")])


def test_bad_environment_values_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSMITH_DEV_PORT_BASE", "high")
    with pytest.raises(DevClusterError, match="MODELSMITH_DEV_PORT_BASE='high'"):
        DevCluster.from_env()


def test_status_of_a_cluster_that_never_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELSMITH_DEV_HOME", str(tmp_path))
    assert main(["dev", "status"]) == 1
    assert "not running" in capsys.readouterr().out
    assert main(["dev", "down"]) == 0


def test_env_exports_kubeconfig_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELSMITH_DEV_HOME", str(tmp_path))
    assert main(["dev", "env"]) == 0
    out = capsys.readouterr().out
    assert f"export KUBECONFIG={tmp_path}/kubeconfig" in out
    assert f'export PATH="{tmp_path}/bin:$PATH"' in out


def test_node_pool_has_gpu_and_cpu_nodes() -> None:
    manifests = [node_manifest(shape) for shape in DEFAULT_NODES]
    gpu = [m for m in manifests if GPU_RESOURCE in m["status"]["capacity"]]
    assert len(gpu) >= 2
    assert len(manifests) - len(gpu) >= 1
    for node in gpu:
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"]
        assert node["spec"]["taints"][0]["key"] == GPU_RESOURCE
    assert all(m["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for m in manifests)


@pytest.mark.parametrize(
    ("tool", "module"),
    [
        (tools.KUBERNETES, "k8s.io/kubernetes"),
        (tools.ETCD, "go.etcd.io/etcd/server/v3"),
        (tools.KWOK, "sigs.k8s.io/kwok"),
        (tools.HELM, "helm.sh/helm/v4"),
    ],
    ids=lambda t: getattr(t, "name", ""),
)
def test_wrapper_modules_pin_the_declared_versions(tool: tools.GoTool, module: str) -> None:
    """`go get -tool` upgrades silently; the version we report must be the one built."""
    gomod = tool.recipe_files()["go.mod"].decode()
    assert f"{module} {tool.version}" in gomod
    if tool is tools.KUBERNETES:
        minor = tool.version.split(".")[1]
        assert f"k8s.io/client-go => k8s.io/client-go v0.{minor}." in gomod


def test_every_component_listens_on_loopback_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tool in tools.ALL_TOOLS:
        for name in tool.packages:
            fake = tmp_path / "cache" / "tools" / tool.cache_key() / name
            fake.parent.mkdir(parents=True, exist_ok=True)
            fake.touch()
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    ports = Ports.from_base(20000)
    found = components(tmp_path, ports, PKIPaths(tmp_path / "pki"), tmp_path / "kubeconfig")
    assert [c.name for c in found] == [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "registry",
        "prometheus",
    ]
    assert sorted(c.port for c in found) == sorted(
        # The provisioner's health port belongs to the real node's stack (nodestorage).
        p
        for n, p in ports.by_component().items()
        if n not in ("etcd (peer)", "provisioner")
    )
    for component in found:
        assert "://127.0.0.1:" in component.health_url
        for arg in component.argv:
            if ("://" in arg and "-url" in arg) or arg.startswith(
                ("--bind-address", "--server-address", "--web.listen-address")
            ):
                assert "127.0.0.1" in arg, f"{component.name}: {arg}"
    apiserver = next(c for c in found if c.name == "kube-apiserver")
    assert "--authorization-mode=Node,RBAC" in apiserver.argv
    assert apiserver.authenticated


def test_kwok_stages_are_separate_documents_with_unique_names() -> None:
    """A missing `---` silently merges two stages into one (the later keys win)."""
    from modelsmith.devcluster.components import stages_bytes

    docs = list(yaml.safe_load_all(stages_bytes()))
    names = [d["metadata"]["name"] for d in docs]
    assert len(names) == len(set(names))
    assert {"modelsmith-job-pod-finished", "modelsmith-job-pod-fails-attempt"} <= set(names)
    for doc in docs:
        assert doc["kind"] == "Stage"
        assert set(doc["spec"]) >= {"resourceRef", "selector", "next"}, doc["metadata"]["name"]


def test_a_process_still_in_its_launcher_counts_as_alive(tmp_path: Path) -> None:
    """nsenter runs for a moment before it execs the node's binary: not dead yet."""
    from modelsmith.devcluster.processes import is_alive, start, stop

    proc = start("launched", ["sleep", "30"], 0, tmp_path / "log", exe="/usr/bin/true")
    try:
        assert is_alive(proc)
    finally:
        stop(proc)
    assert not is_alive(proc)
    stranger = start("other", ["sleep", "30"], 0, tmp_path / "log2")
    try:
        assert not is_alive(replace(stranger, argv=["/usr/bin/true"]))
    finally:
        stop(stranger)
