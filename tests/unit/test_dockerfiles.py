"""Static checks of the image Dockerfiles (no Docker engine here to build them).

What is checked is what review keeps missing: a pinned base, a non-root user, every
COPY source present in the repository, and the entrypoint the operator's Jobs call.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"operator": "modelsmith", "data": "modelsmith-runtime"}
IMAGES |= {"trainer": "modelsmith-runtime", "quantizer": "modelsmith-runtime"}
IMAGES |= {"server": "modelsmith-runtime"}


@pytest.mark.parametrize(("image", "entrypoint"), sorted(IMAGES.items()))
def test_dockerfile_is_pinned_non_root_and_complete(image: str, entrypoint: str) -> None:
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None, "the base image is an ARG with a default"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    assert all(s.startswith("${PYTHON_IMAGE}") for s in stages)
    assert re.search(r"^USER 10001$", text, re.MULTILINE), "runs as a non-root uid"
    assert f'ENTRYPOINT ["{entrypoint}"]' in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"


EXTRAS = {"data": ["ray --minus project"]}
EXTRAS |= {"trainer": ["train ray --minus project hf", "deepspeed --minus project"]}
EXTRAS |= {"quantizer": ["quantize --minus project hf"], "server": ["serve --minus project hf"]}


@pytest.mark.parametrize("image", sorted(EXTRAS))
def test_workload_images_install_only_their_extra(image: str) -> None:
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    # The dependencies come from images/runtime/pyproject.toml and the image's extras
    # alone (images/pyproject_deps.py); the packages follow without their dependencies.
    layer = r"pyproject_deps\.py pyproject\.toml ([a-z -]+) > /deps/(?:image|deepspeed)"
    found = re.findall(layer, text)
    assert found == EXTRAS[image]
    assert "COPY images/pyproject_deps.py images/runtime/pyproject.toml /tmp/deps/" in text
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in text, "no operator deps"
