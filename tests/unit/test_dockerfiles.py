"""Static checks of the image Dockerfiles (no Docker engine here to build them).

What is checked is what review keeps missing: a pinned base, a non-root user, every
COPY source present in the repository, and the entrypoint the operator's Jobs call.
The operator image has its own Dockerfile; the four workload images are targets of
images/workloads.Dockerfile, each checked on its own stage and the stages it reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modelsmith.devcluster import imagecontext

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"operator": "modelsmith", "data": "modelsmith-runtime"}
IMAGES |= {"trainer": "modelsmith-runtime", "quantizer": "modelsmith-runtime"}
IMAGES |= {"server": "modelsmith-runtime"}


def _dockerfile(image: str) -> str:
    return imagecontext.dockerfile_path(ROOT, image).read_text()


def _own_stage(image: str) -> str:
    """The stage that is the image: its build target, or the last one."""
    _, stages = imagecontext._stages(_dockerfile(image))
    target = imagecontext.build_target(image)
    return dict(stages)[target] if target else stages[-1][1]


def test_the_images_are_the_operator_dockerfile_and_the_workload_targets() -> None:
    assert set(IMAGES) == set(imagecontext.IMAGES)
    assert sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("images/**/*Dockerfile")) == [
        "images/operator/Dockerfile",
        "images/workloads.Dockerfile",
    ], "one Dockerfile for the four workload images, whose shared stages are written once"
    targets = re.findall(r"^FROM \S+ AS (\S+)$", _dockerfile("data"), re.MULTILINE)
    assert set(imagecontext.WORKLOADS) <= set(targets)


@pytest.mark.parametrize(("image", "entrypoint"), sorted(IMAGES.items()))
def test_dockerfile_is_pinned_non_root_and_complete(image: str, entrypoint: str) -> None:
    text = _dockerfile(image)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None, "the base image is an ARG with a default"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    read = imagecontext.target_text(text, imagecontext.build_target(image))
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?", read, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    defined: set[str] = set()
    for parent, name in stages:  # the base, or a stage built on it above
        assert parent.startswith("${PYTHON_IMAGE}") or parent in defined, parent
        defined.add(name)
    own = _own_stage(image)
    assert re.search(r"^USER 10001$", own, re.MULTILINE), "runs as a non-root uid"
    assert f'ENTRYPOINT ["{entrypoint}"]' in own
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"


EXTRAS = {"data": ["data ray --minus project"]}
EXTRAS |= {"trainer": ["train ray data --minus project hf", "deepspeed --minus project"]}
EXTRAS |= {"quantizer": ["quantize --minus project hf"], "server": ["serve --minus project hf"]}


@pytest.mark.parametrize("image", sorted(EXTRAS))
def test_workload_images_install_only_their_extra(image: str) -> None:
    text = _dockerfile(image)
    # The dependencies come from images/runtime/pyproject.toml and the image's extras
    # alone (images/pyproject_deps.py); the packages follow without their dependencies.
    layer = rf"pyproject_deps\.py pyproject\.toml ([a-z -]+) > /deps/{image}/(?:image|deepspeed)"
    found = re.findall(layer, text)
    assert found == EXTRAS[image]
    assert "COPY images/pyproject_deps.py images/runtime/pyproject.toml /tmp/deps/" in text
    own = _own_stage(image)
    assert re.findall(r"COPY --from=deps /deps/(\S+)/\S+ ", own) == [image] * len(found)
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in own, "no operator deps"
