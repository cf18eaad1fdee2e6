"""The dev cluster's Go tools: their recipes and cache keys, without building anything."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelsmith.devcluster import tools

REPO = Path(__file__).resolve().parents[2]
GOMOD = REPO / "operator" / "modelsmith" / "devcluster" / "gomod"


def test_node_tool_is_built_from_the_control_plane_module() -> None:
    node, plane = tools.KUBE_NODE, tools.KUBERNETES
    assert node.module_dir == "kubernetes"
    assert node.name != plane.name
    assert node.recipe_files() == plane.recipe_files()
    assert (node.version, node.ldflags, node.tags) == (plane.version, plane.ldflags, plane.tags)
    assert set(node.packages) == {"kubelet", "kube-proxy"}
    assert node.cache_key().startswith(f"kubernetes-node-{tools.KUBERNETES_VERSION}-")
    assert node.cache_key() != plane.cache_key()


def test_control_plane_module_pins_kube_proxy_for_the_kubelet() -> None:
    gomod = tools.KUBE_NODE.recipe_files()["go.mod"].decode()
    minor = tools.KUBERNETES_VERSION.split(".")[1]
    assert f"k8s.io/kube-proxy => k8s.io/kube-proxy v0.{minor}." in gomod


@pytest.mark.parametrize(
    ("tool", "module"),
    [
        (tools.KUBE_NODE, "k8s.io/kubernetes"),
        (tools.COREDNS, "github.com/coredns/coredns"),
        (tools.REGISTRY, "github.com/distribution/distribution/v3"),
        (tools.OBJECT_STORE, "github.com/versity/versitygw"),
        (tools.PROVISIONER, "sigs.k8s.io/sig-storage-lib-external-provisioner/v13"),
    ],
    ids=lambda t: getattr(t, "name", ""),
)
def test_new_wrapper_modules_pin_the_declared_versions(tool: tools.GoTool, module: str) -> None:
    gomod = tool.recipe_files()["go.mod"].decode()
    assert re.search(rf"^\s*(require )?{re.escape(module)} {tool.version}\b", gomod, re.M)


@pytest.mark.parametrize(
    "tool", [tools.COREDNS, tools.REGISTRY, tools.PROVISIONER], ids=lambda t: t.name
)
def test_custom_mains_build_the_wrapper_module_itself(tool: tools.GoTool) -> None:
    """The main package is the module's root, so `go build -o dir/` names it after it."""
    files = tool.recipe_files()
    assert "main.go" in files
    module = re.search(r"^module (\S+)$", files["go.mod"].decode(), re.M)
    assert module is not None
    assert list(tool.packages.values()) == [module.group(1)]
    assert tools._default_binary_name(module.group(1)) == next(iter(tool.packages))


def _fake_module(root: Path, name: str) -> tools.GoTool:
    folder = root / "gomod" / name
    folder.mkdir(parents=True)
    (folder / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.26.0\n")
    (folder / "go.sum").write_text("")
    (folder / "main.go").write_text("package main\n\nfunc main() {}\n")
    return tools.GoTool(name=name, version="v1.0.0", packages={name: f"example.com/{name}"})


def test_go_sources_are_part_of_the_recipe_and_the_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools, "resources", SimpleNamespace(files=lambda _pkg: tmp_path))
    tool = _fake_module(tmp_path, "fake")
    folder = tmp_path / "gomod" / "fake"
    assert sorted(tool.recipe_files()) == ["go.mod", "go.sum", "main.go"]
    first = tool.cache_key()

    (folder / "README.md").write_text("not part of the build\n")
    (folder / "sub.go").mkdir()  # a folder, not a source file
    assert tool.cache_key() == first

    (folder / "main.go").write_text('package main\n\nfunc main() { println("hi") }\n')
    second = tool.cache_key()
    assert second != first

    (folder / "flags.go").write_text("package main\n")
    assert "flags.go" in tool.recipe_files()
    assert tool.cache_key() not in (first, second)


def test_module_field_chooses_the_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools, "resources", SimpleNamespace(files=lambda _pkg: tmp_path))
    shared = _fake_module(tmp_path, "shared")
    other = tools.GoTool(name="other", module="shared", version="v1.0.0", packages={"x": "x"})
    assert other.recipe_files() == shared.recipe_files()
    assert other.cache_key().startswith("other-v1.0.0-")


def test_all_tools_have_unique_names_keys_and_binaries() -> None:
    names = [t.name for t in tools.ALL_TOOLS]
    assert len(names) == len(set(names))
    keys = [t.cache_key() for t in tools.ALL_TOOLS]
    assert len(keys) == len(set(keys))
    # `dev up` links every binary into one bin/ folder.
    binaries = [b for t in tools.ALL_TOOLS for b in t.packages]
    assert len(binaries) == len(set(binaries))
    for tool in (tools.KUBE_NODE, tools.COREDNS, tools.REGISTRY):
        assert tool in tools.ALL_TOOLS


def _coredns_main() -> str:
    return tools.COREDNS.recipe_files()["main.go"].decode()


def test_coredns_links_exactly_its_directives_and_no_forward() -> None:
    source = _coredns_main()
    imported = re.findall(r'_ "github.com/coredns/coredns/plugin/(\w+)"', source)
    block = re.search(r"var directives = \[\]string\{(.*?)\}", source, re.S)
    assert block is not None
    directives = re.findall(r'"(\w+)"', block.group(1))
    assert sorted(imported) == sorted(directives)
    assert set(directives) == {
        "bind",
        "ready",
        "health",
        "errors",
        "log",
        "loadbalance",
        "cache",
        "kubernetes",
    }
    # CoreDNS runs a request through the directives in this order (its plugin.cfg).
    assert directives.index("cache") < directives.index("kubernetes")
    assert "forward" not in directives
    assert "coredns/plugin/forward" not in source
    assert '"github.com/coredns/coredns/core/plugin"' not in source  # links every plugin


def test_registry_links_only_the_filesystem_driver() -> None:
    source = tools.REGISTRY.recipe_files()["main.go"].decode()
    drivers = re.findall(
        r'"github.com/distribution/distribution/v3/registry/storage/driver/([^"]+)"', source
    )
    assert drivers == ["filesystem"]
    assert "registry/proxy" not in source


def test_wheel_ships_every_wrapper_module_file() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["modelsmith"]
    package = REPO / "operator" / "modelsmith"
    files = [p.relative_to(package).as_posix() for p in GOMOD.rglob("*") if p.is_file()]
    assert files
    for name in files:
        assert name.count("/") == 3, name  # setuptools' * stays inside a folder
        assert any(fnmatch(name, pattern) for pattern in patterns), name
