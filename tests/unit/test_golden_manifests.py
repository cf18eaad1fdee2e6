"""Golden manifests: every child each sample resource gets, byte for byte.

The assertions elsewhere check the rules; these files show a reviewer the whole diff a
builder change makes to what lands in a cluster. Regenerate after an intended change
with `MODELSMITH_UPDATE_GOLDEN=1 pytest tests/unit/test_golden_manifests.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.builders.batch import (
    Owner,
    desired_configmap,
    desired_job,
    desired_service,
    task_config,
)
from modelsmith.config import Settings

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(image_registry="registry.test/modelsmith", image_tag="0.0.0-golden")
KINDS = {k.info.kind: k for k in BATCH_KINDS}


def _sample_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in ("datapipeline.yaml", "chain.yaml"):
        docs += [d for d in yaml.safe_load_all((ROOT / "samples" / name).read_text()) if d]
    return [d for d in docs if d["kind"] in KINDS]


def _children(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kind = KINDS[doc["kind"]]
    spec = kind.parse(doc["spec"])
    name = doc["metadata"]["name"]
    owner = Owner(doc["kind"], name, "ml", f"uid-{name}")
    inputs = {
        key: value.uri or f"s3://upstream/{value.from_ref.name}"  # type: ignore[union-attr]
        for key, value in kind.inputs(spec).items()
        if value is not None
    }
    layout = kind.layout(spec)
    config = task_config(owner, spec, inputs, spec.output.uri)
    children = [
        desired_configmap(owner, layout, config),
        desired_service(owner, layout),
        desired_job(owner, spec, layout, SETTINGS),
    ]
    return [c for c in children if c is not None]


@pytest.mark.parametrize("doc", _sample_docs(), ids=lambda d: d["metadata"]["name"])
def test_children_match_the_golden_manifests(doc: dict[str, Any]) -> None:
    rendered = yaml.safe_dump_all(_children(doc), sort_keys=True)
    path = GOLDEN / f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
    if os.environ.get("MODELSMITH_UPDATE_GOLDEN") == "1":
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with MODELSMITH_UPDATE_GOLDEN=1"
    assert rendered == path.read_text(), f"{path.name} drifted (MODELSMITH_UPDATE_GOLDEN=1)"
