from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelsmith import crdgen
from modelsmith.api import DATAPIPELINE, KINDS, PRETRAINJOB
from modelsmith.batchkinds import BATCH_KINDS


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return []
    found = [(path, node)]
    for key, value in node.get("properties", {}).items():
        found += _walk(value, f"{path}.{key}")
    if "items" in node:
        found += _walk(node["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("info", KINDS, ids=lambda k: k.kind)
def test_generated_schema_is_structural(info: crdgen.KindInfo) -> None:
    schema = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"anyOf"', '"$defs"', '"title"', '"const"'):
        assert forbidden not in text
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        scalar_item = path.endswith("[]") and "properties" not in node
        if path.count(".") >= 2 and not scalar_item:  # what kubectl explain shows
            assert node.get("description"), f"{path} has no description"


def test_crd_carries_names_columns_and_status_subresource() -> None:
    crd = crdgen.crd(DATAPIPELINE)
    names = crd["spec"]["names"]
    assert names["categories"] == ["modelsmith"]
    assert names["shortNames"] == ["dp"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"


def test_pydantic_bounds_become_openapi_bounds() -> None:
    spec = crdgen.openapi_schema(DATAPIPELINE.spec)
    weight = spec["properties"]["sources"]["items"]["properties"]["weight"]
    assert weight["minimum"] == 0
    assert weight["exclusiveMinimum"] is True
    image = spec["properties"]["image"]
    assert image["nullable"] is True
    assert "default" not in image
    rules = spec["properties"]["output"]["x-kubernetes-validations"]
    assert rules[0] == {"rule": "self == oldSelf", "message": "output is immutable"}


def test_committed_crds_match_the_models() -> None:
    assert crdgen.check() == [], "run `modelsmith crds` and commit the result"


def test_check_reports_drift_and_strays(tmp_path: Path) -> None:
    (tmp_path / "crds").mkdir()
    # crds/ and the chart, our kinds and kopf's peering ones; the batch Argo CD checks
    crds = 2 * (len(KINDS) + len(crdgen.PEERING_KINDS))
    # … plus the Argo CD batch checks and the chart's node-path policy.
    assert len(crdgen.check(tmp_path)) == crds + len(BATCH_KINDS) + 1
    crdgen.write(tmp_path)
    assert crdgen.check(tmp_path) == []
    stray = tmp_path / "crds" / "old.modelsmith.io.yaml"
    stray.write_text("{}")
    assert crdgen.check(tmp_path) == [stray]


def test_chart_template_wraps_the_same_crd() -> None:
    text = crdgen.render_chart_template(DATAPIPELINE)
    assert text.splitlines()[1] == "{{- if .Values.crds.enabled }}"
    assert "helm.sh/resource-policy: keep" in text
    plain = crdgen.render(DATAPIPELINE).splitlines()
    assert all(line in text.splitlines() for line in plain)


def test_field_rules_add_to_the_model_rules() -> None:
    """architecture is immutable *and* keeps its own cross-field rules."""
    spec = crdgen.openapi_schema(PRETRAINJOB.spec)
    rules = [r["rule"] for r in spec["properties"]["architecture"]["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert "self.hiddenSize % self.heads == 0" in rules
