"""The pure parts of the dev images' build: content tags, buildah's argv, the base recipe.

No buildah runs here: building for real is `modelsmith dev images` (see the module).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from modelsmith.cli import main
from modelsmith.devcluster import imagebase, imagecontext, images
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.images import ImageRef

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/modelsmith/python-base:bookworm-0123456789ab"
TORCH_IMAGES = ("trainer", "quantizer", "server")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small checkout: the real Dockerfiles, .dockerignore and helper; stub sources."""
    root = tmp_path / "repo"
    (root / "images" / "operator").mkdir(parents=True)
    for dockerfile in ("images/operator/Dockerfile", "images/workloads.Dockerfile"):
        shutil.copy(ROOT / dockerfile, root / dockerfile)
    shutil.copy(ROOT / "images" / "pyproject_deps.py", root / "images" / "pyproject_deps.py")
    shutil.copy(ROOT / ".dockerignore", root / ".dockerignore")
    files = {
        "pyproject.toml": '[project]\nname = "modelsmith"\ndependencies = ["kopf"]\n',
        "README.md": "# modelsmith\n",
        "operator/modelsmith/__init__.py": "",
        "operator/modelsmith/cli.py": "def main() -> int:\n    return 0\n",
        "images/runtime/pyproject.toml": '[project]\nname = "modelsmith-runtime"\n',
        "images/runtime/modelsmith_runtime/cli.py": "def main() -> int:\n    return 0\n",
        "tests/unit/test_x.py": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def tags(root: Path, base: str = BASE) -> dict[str, str]:
    return {name: imagecontext.image_tag(name, root, base) for name in imagecontext.IMAGES}


def test_tag_is_stable_and_follows_the_sources(tree: Path) -> None:
    before = tags(tree)
    assert before == tags(tree), "the same tree gives the same tags"
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in before.values())
    assert len(set(before.values())) == len(before), "each image's stages differ"

    (tree / "images/runtime/modelsmith_runtime/cli.py").write_text("# changed\n")
    after = tags(tree)
    assert after["operator"] == before["operator"], "the operator image has no runtime code"
    assert all(after[n] != before[n] for n in ("data", *TORCH_IMAGES))

    (tree / "operator/modelsmith/cli.py").write_text("# changed too\n")
    assert all(tags(tree)[n] != after[n] for n in imagecontext.IMAGES)


def test_tag_ignores_unrelated_and_dockerignored_files(tree: Path) -> None:
    before = tags(tree)
    (tree / "tests/unit/test_x.py").write_text("changed = True\n")
    (tree / "images/operator/NOTES.md").write_text("not copied by any Dockerfile\n")
    cache = tree / "operator/modelsmith/__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"\0")
    (tree / "operator/modelsmith.egg-info").mkdir()
    (tree / "operator/modelsmith.egg-info/PKG-INFO").write_text("Name: modelsmith\n")
    assert tags(tree) == before


def test_tag_follows_the_dockerfile_the_base_and_the_dependencies(tree: Path) -> None:
    before = tags(tree)
    assert tags(tree, BASE.replace("0123", "4567")) != before
    dockerfile = tree / "images/workloads.Dockerfile"
    text = dockerfile.read_text()

    def edit_stage(stage: str) -> set[str]:
        """The tags after a LABEL was added to one stage of the shared Dockerfile."""
        line = next(ln for ln in text.splitlines() if ln.endswith(f" AS {stage}"))
        dockerfile.write_text(text.replace(line + "\n", f"{line}\nLABEL x=y\n"))
        edited = tags(tree)
        dockerfile.write_text(text)
        return {n for n, t in edited.items() if t != before[n]}

    assert edit_stage("data") == {"data"}, "an image's own stage is its alone"
    assert edit_stage("torch") == set(TORCH_IMAGES)
    assert edit_stage("common") == {"data", *TORCH_IMAGES}
    assert edit_stage("build") == {"data", *TORCH_IMAGES}
    assert tags(tree) == before
    operator = tree / "images/operator/Dockerfile"
    operator.write_text(operator.read_text() + "LABEL x=y\n")
    after = tags(tree)
    assert after["operator"] != before["operator"]
    assert {n: t for n, t in after.items() if n != "operator"} == {
        n: t for n, t in before.items() if n != "operator"
    }
    (tree / "images/runtime/pyproject.toml").write_text('[project]\nname = "x"\n')
    assert tags(tree)["operator"] == after["operator"]
    assert tags(tree)["data"] != after["data"]


def test_copy_sources_skip_other_stages_and_flags() -> None:
    dockerfile = (
        "FROM x AS build\n"
        "COPY --chown=1:1 a.txt b/ /dst/\n"
        "# a comment\n"
        "COPY --from=build /wheels /wheels\n"
        'COPY ["c d", "/e"]\n'
        "RUN echo \\\n  COPY not-an-instruction /x\n"
        "ADD f.tar /\n"
    )
    assert imagecontext.copy_sources(dockerfile) == ["a.txt", "b", "c d", "f.tar"]


def test_every_copy_source_of_the_real_dockerfiles_exists() -> None:
    for name in imagecontext.IMAGES:
        text = imagecontext.dockerfile_path(ROOT, name).read_text()
        sources = imagecontext.copy_sources(
            imagecontext.target_text(text, imagecontext.build_target(name))
        )
        assert "operator" in sources
        assert imagecontext.context_files(ROOT, sources, imagecontext.ignore_patterns(ROOT))


def test_dockerignore_patterns(tree: Path) -> None:
    patterns = imagecontext.ignore_patterns(tree)
    assert imagecontext.is_ignored("operator/modelsmith/__pycache__/x.pyc", patterns)
    assert imagecontext.is_ignored("images/runtime/modelsmith_runtime.egg-info/PKG-INFO", patterns)
    assert imagecontext.is_ignored(".venv/bin/python", patterns)
    assert not imagecontext.is_ignored("operator/modelsmith/cli.py", patterns)
    (tree / ".dockerignore").write_text("!keep.txt\n")
    with pytest.raises(DevClusterError, match="only NAME"):
        imagecontext.ignore_patterns(tree)


def test_bud_argv_uses_runc_layers_the_ca_bundle_and_the_local_base(tree: Path) -> None:
    argv = images.bud_argv("data", tree, "abc", BASE)
    assert argv[:2] == ["buildah", "bud"]
    assert argv[argv.index("--runtime") + 1] == "runc", "crun fails on hybrid cgroup v1"
    assert "--layers" in argv
    assert argv[argv.index("--network") + 1] == "host"
    ca = "/etc/ssl/certs/ca-certificates.crt"
    assert argv[argv.index("-v") + 1] == f"{ca}:{ca}:ro"
    assert argv[argv.index("--build-arg") + 1] == f"PYTHON_IMAGE={BASE}"
    assert argv[argv.index("-f") + 1] == str(tree / "images/workloads.Dockerfile")
    assert argv[argv.index("--target") + 1] == "data", "a stage of the shared Dockerfile"
    assert argv[argv.index("-t") + 1] == "localhost/modelsmith/data:abc"
    assert argv[-1] == str(tree)
    operator = images.bud_argv("operator", tree, "abc", BASE)
    assert operator[operator.index("-f") + 1] == str(tree / "images/operator/Dockerfile")
    assert "--target" not in operator
    assert "-v" not in images.bud_argv("data", tree, "abc", BASE, ca_bundle=None)


def test_push_argv_speaks_plain_http_to_the_dev_registry() -> None:
    ref = ImageRef("data", "0123456789abcdef")
    assert ref.reference == "localhost/modelsmith/data:0123456789abcdef"
    assert images.push_argv(ref, "127.0.0.1:5000") == [
        "buildah",
        "push",
        "--tls-verify=false",
        "--compression-format=zstd",
        "localhost/modelsmith/data:0123456789abcdef",
        "docker://127.0.0.1:5000/modelsmith/data:0123456789abcdef",
    ]
    with pytest.raises(DevClusterError, match="HOST:PORT"):
        images.push(ref, "http://127.0.0.1:5000")


def test_base_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = imagebase.base_key()
    assert re.fullmatch(r"bookworm-[0-9a-f]{12}", key)
    assert imagebase.base_reference() == f"localhost/modelsmith/python-base:{key}"
    argv = imagebase.mmdebstrap_argv(tmp_path / "base.tar")
    assert "--variant=minbase" in argv
    assert "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates" in argv
    assert any("EXTERNALLY-MANAGED" in a and a.startswith("--customize-hook=rm") for a in argv)
    assert argv[argv.index("bookworm") + 1] == str(tmp_path / "base.tar")
    monkeypatch.setattr(imagebase, "BASE_PACKAGES", (*imagebase.BASE_PACKAGES, "curl"))
    assert imagebase.base_key() != key


def test_base_tarball_is_cached_outside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSMITH_CACHE", str(tmp_path / "cache"))
    assert imagebase.base_tarball().parent == tmp_path / "cache" / "images"


def test_missing_buildah_names_the_debian_packages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DevClusterError, match=r"apt-get install .*buildah mmdebstrap runc"):
        images.build(["data"])
    assert main(["dev", "images", "operator"]) == 1
    assert "buildah" in capsys.readouterr().err


def test_unknown_image_is_a_clear_error() -> None:
    with pytest.raises(DevClusterError, match="unknown image nope"):
        images.build(["nope"])


def test_image_names_belong_to_dev_images(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "status", "data"]) == 1
    assert "modelsmith dev images" in capsys.readouterr().err


def _final_stage(name: str) -> list[str]:
    """The image's instructions from its base on: its own stage's after those of the
    stages it is FROM (the shared ones of images/workloads.Dockerfile)."""
    text = imagecontext.dockerfile_path(ROOT, name).read_text()
    _, stages = imagecontext._stages(text)
    by_name = dict(stages)
    stage: str | None = imagecontext.build_target(name) or stages[-1][0]
    steps: list[str] = []
    while stage is not None:
        own = [f"{word} {args}" for word, args in imagecontext.instructions(by_name[stage])]
        steps = own + steps[1:]
        parent = own[0].split()[1]
        stage = parent if parent in by_name else None
    return steps


WORKLOAD_IMAGES = ("data", *TORCH_IMAGES)


def test_workload_images_share_their_dependency_layers() -> None:
    """Same parent and the same instruction on the same file: buildah's layer cache,
    the registry and the node then hold the shared layers once. The runtime's own
    dependencies come first in all four workload images; torch and the hf extra next
    in the three torch images."""
    common = [
        "FROM ${PYTHON_IMAGE} AS common",
        "RUN useradd --uid 10001 --create-home modelsmith",
        "COPY --from=deps /deps/common.txt /tmp/deps/",
        "RUN --mount=type=cache,target=/root/.cache/pip  pip install -r /tmp/deps/common.txt",
    ]
    for name in WORKLOAD_IMAGES:
        assert _final_stage(name)[:4] == common, name
    heads = {name: _final_stage(name)[4:7] for name in TORCH_IMAGES}
    first = heads["trainer"]
    assert all(head == first for head in heads.values()), heads
    assert re.fullmatch(r"RUN pip install --no-cache-dir torch==\d+\.\d+\.\d+", first[0])
    assert first[1:] == [
        "COPY --from=deps /deps/hf.txt /tmp/deps/",
        "RUN --mount=type=cache,target=/root/.cache/pip  pip install -r /tmp/deps/hf.txt",
    ]
    assert not any("torch" in step for step in _final_stage("data")), "the data image has none"


def test_the_torch_pin_is_what_the_hf_extra_allows() -> None:
    import tomllib

    from packaging.requirements import Requirement

    runtime = tomllib.loads((ROOT / "images/runtime/pyproject.toml").read_text())
    hf = runtime["project"]["optional-dependencies"]["hf"]
    torch = Requirement(next(r for r in hf if r.startswith("torch")))
    for name in TORCH_IMAGES:
        pin = re.search(r"torch==(\S+)", "\n".join(_final_stage(name)))
        assert pin is not None and torch.specifier.contains(pin.group(1)), name


@pytest.mark.parametrize("name", imagecontext.IMAGES)
def test_dependencies_come_before_the_sources(name: str) -> None:
    """A source-only change must leave the dependency layer cached."""
    steps = _final_stage(name)
    deps = next(i for i, s in enumerate(steps) if "pip install -r /tmp/deps/" in s)
    sources = steps.index("COPY --from=build /wheels /wheels")
    assert deps < sources
    assert "--mount=type=cache,target=/root/.cache/pip" in steps[deps]
    for step in steps[:deps]:
        if step.startswith("COPY"):
            assert re.search(r" /tmp/deps/$", step) and "operator" not in step, step
    assert "--no-deps /wheels/*.whl" in steps[sources + 1]


def _pyproject_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pyproject_deps", ROOT / "images/pyproject_deps.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pyproject_deps_expands_extras_and_self_references() -> None:
    helper = _pyproject_deps()
    project = {
        "project": {
            "name": "Modelsmith_Runtime",
            "dependencies": ["numpy>=2"],
            "optional-dependencies": {
                "a": ["torch>=2.15", "numpy>=2"],
                "b": ["ray[data]>=2.60"],
                "all": ["modelsmith-runtime[a,b]"],
            },
        }
    }
    assert helper.requirements(project, []) == ["numpy>=2"]
    assert helper.requirements(project, ["all"]) == ["numpy>=2", "torch>=2.15", "ray[data]>=2.60"]
    assert helper.requirements(project, ["all"], ["project", "a"]) == ["ray[data]>=2.60"]
    assert helper.requirements(project, ["a"], ["project"]) == ["torch>=2.15"]
    assert helper.requirements(project, [], ["project"]) == []
    with pytest.raises(SystemExit, match="no extra 'c'"):
        helper.requirements(project, ["c"])


def test_pyproject_deps_reads_the_real_runtime_extras() -> None:
    import tomllib

    helper = _pyproject_deps()
    runtime = tomllib.loads((ROOT / "images/runtime/pyproject.toml").read_text())
    train = helper.requirements(runtime, ["train", "ray"])
    assert any(r.startswith("torch") for r in train)
    assert any(r.startswith("ray[") for r in train)
    assert not any(r.startswith("torch") for r in helper.requirements(runtime, ["ray"]))
    for extra in ("train", "quantize", "serve"):
        own = helper.requirements(runtime, [extra], ["project", "hf"])
        assert own and not any(helper._name(r) in {"torch", "transformers"} for r in own), extra


def test_pyproject_deps_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    script, toml = ROOT / "images/pyproject_deps.py", ROOT / "images/runtime/pyproject.toml"

    def run(*args: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, script, toml, *args], capture_output=True, check=False
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.decode().split()

    assert "numpy>=2.4" in run()
    hf = run("hf", "--minus", "project")
    assert hf[0].startswith("torch>=") and "numpy>=2.4" not in hf
    assert run("hf", "--minus", "project", "hf") == []


def test_prune_goes_alone_with_dev_images(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "images", "data", "--prune"]) == 1
    assert "--prune goes alone" in capsys.readouterr().err
    assert main(["dev", "status", "--prune"]) == 1
    assert "go with `modelsmith dev images`" in capsys.readouterr().err
