from __future__ import annotations

from typing import Any

from modelsmith.api.common import Input
from modelsmith.refs import resolve


def _ref(kind: str, name: str) -> Input:
    return Input.model_validate({"fromRef": {"kind": kind, "name": name}})


def _obj(cond: str | None, uri: str | None = "/up", digest: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"outputs": {"uri": uri, "digest": digest}}
    if cond:
        status["conditions"] = [{"type": cond, "status": "True"}]
    return {"status": status}


def test_uri_inputs_resolve_to_themselves_and_are_recorded() -> None:
    res = resolve({"dataset": Input(uri="/data"), "tokenizer": None}, lambda _k, _n: None)
    assert res.ready
    assert res.uris == {"dataset": "/data"}
    assert [(e.kind, e.uri) for e in res.lineage] == [("Uri", "/data")]


def test_succeeded_upstream_gives_its_output_and_lineage() -> None:
    world = {("DataPipeline", "c"): _obj("Succeeded", "/shards", "sha256:ab")}
    res = resolve({"dataset": _ref("DataPipeline", "c")}, lambda k, n: world.get((k, n)))
    assert res.ready
    assert res.uris == {"dataset": "/shards"}
    entry = res.lineage[0]
    assert (entry.kind, entry.name, entry.uri, entry.digest) == (
        "DataPipeline",
        "c",
        "/shards",
        "sha256:ab",
    )


def test_missing_running_and_failed_upstreams_are_told_apart() -> None:
    world = {
        ("PretrainJob", "running"): _obj(None),
        ("PretrainJob", "broken"): _obj("Failed"),
        ("PretrainJob", "no-output"): _obj("Succeeded", uri=None),
    }
    res = resolve(
        {
            "a": _ref("PretrainJob", "running"),
            "b": _ref("PretrainJob", "broken"),
            "c": _ref("PretrainJob", "gone"),
            "d": _ref("PretrainJob", "no-output"),
        },
        lambda k, n: world.get((k, n)),
    )
    assert not res.ready
    assert res.pending == ["PretrainJob/running", "PretrainJob/no-output"]
    assert res.failed == ["PretrainJob/broken"]
    assert res.missing == ["PretrainJob/gone"]
    assert res.uris == {}


def test_an_upstreams_reported_size_comes_along() -> None:
    sized = _obj("Succeeded", "pvc://d/m", "sha256:ab")
    sized["status"]["outputs"]["sizeBytes"] = 4096
    world = {("FineTune", "sized"): sized, ("FineTune", "unsized"): _obj("Succeeded")}
    res = resolve(
        {"model": _ref("FineTune", "sized"), "other": _ref("FineTune", "unsized")},
        lambda k, n: world.get((k, n)),
    )
    assert res.sizes == {"model": 4096}


def test_an_upstreams_version_comes_along_into_lineage() -> None:
    versioned = _obj("Succeeded", "pvc://d/q", "sha256:cd")
    versioned["status"]["outputs"]["version"] = "1.2.3-alpha.20231001"
    world = {("QuantizeJob", "v"): versioned, ("QuantizeJob", "plain"): _obj("Succeeded")}
    res = resolve(
        {"model": _ref("QuantizeJob", "v"), "other": _ref("QuantizeJob", "plain")},
        lambda k, n: world.get((k, n)),
    )
    assert res.versions == {"model": "1.2.3-alpha.20231001"}
    assert [e.version for e in res.lineage] == ["1.2.3-alpha.20231001", None]
