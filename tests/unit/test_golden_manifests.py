"""Golden manifests: every child each sample resource gets, byte for byte, per store.

The assertions elsewhere check the rules; these files show a reviewer the whole diff a
builder change makes to what lands in a cluster. The samples run on a claim (pvc://);
the other stores are the same samples with the storage a user would change: s3:// with
a Secret, s3:// with workload identity (a ServiceAccount, no keys), and the operator's
default store (no output.uri). Regenerate after an intended change with
`MODELSMITH_UPDATE_GOLDEN=1 pytest tests/unit/test_golden_manifests.py`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith import storagecheck
from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.builders.batch import desired_configmap, desired_job, desired_service, task_config
from modelsmith.builders.owner import Owner
from modelsmith.config import Settings
from modelsmith.validation import uri_fields

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(image_registry="registry.test/modelsmith", image_tag="0.0.0-golden")
KINDS = {k.info.kind: k for k in BATCH_KINDS}


def _docs(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((ROOT / "samples" / name).read_text()) if d]
    return [d for d in docs if d["kind"] in KINDS]


def _with_identity(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    del doc["spec"]["storage"]
    doc["spec"]["serviceAccountName"] = "s3-reader"
    doc["metadata"]["name"] += "-irsa"
    return doc


def _default_store(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    del doc["spec"]["output"]
    doc["metadata"]["name"] += "-default-store"
    return doc


STORE = replace(
    SETTINGS, default_storage="s3://modelsmith-store", default_storage_secret="store-keys"
)
CASES: list[tuple[str, dict[str, Any], Settings]] = [
    *(("", d, SETTINGS) for d in _docs("datapipeline.yaml") + _docs("chain.yaml")),
    *(("s3-secret-", d, STORE) for d in _docs("s3-datapipeline.yaml")),
    *(("s3-identity-", _with_identity(d), STORE) for d in _docs("s3-datapipeline.yaml")),
    *(("store-", _default_store(d), STORE) for d in _docs("chain.yaml")[1:2]),
]


def _children(doc: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """What the batch handler builds, fromRefs resolved to where the samples put them."""
    kind = KINDS[doc["kind"]]
    spec = kind.parse(doc["spec"])
    name = doc["metadata"]["name"]
    owner = Owner(doc["kind"], name, "ml", f"uid-{name}")
    inputs = {
        key: value.uri or f"pvc://modelsmith-artifacts/upstream/{value.from_ref.name}"  # type: ignore[union-attr]
        for key, value in kind.inputs(spec).items()
        if value is not None
    }
    artifacts = storagecheck.artifacts(owner, spec, settings, inputs, uri_fields(spec))
    assert artifacts is not None
    layout = kind.layout(spec)
    config = task_config(owner, spec, inputs, artifacts.output)
    children = [
        desired_configmap(owner, layout, config),
        desired_service(owner, layout),
        desired_job(owner, spec, layout, settings, artifacts),
    ]
    return [c for c in children if c is not None]


@pytest.mark.parametrize(
    ("prefix", "doc", "settings"), CASES, ids=[p + d["metadata"]["name"] for p, d, _ in CASES]
)
def test_children_match_the_golden_manifests(
    prefix: str, doc: dict[str, Any], settings: Settings
) -> None:
    rendered = yaml.safe_dump_all(_children(doc, settings), sort_keys=True)
    path = GOLDEN / f"{prefix}{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
    if os.environ.get("MODELSMITH_UPDATE_GOLDEN") == "1":
        path.write_text(rendered)
    assert path.exists(), f"{path} missing: run with MODELSMITH_UPDATE_GOLDEN=1"
    assert rendered == path.read_text(), f"{path.name} drifted (MODELSMITH_UPDATE_GOLDEN=1)"
