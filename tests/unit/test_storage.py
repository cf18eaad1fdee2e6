"""Storage rules without a cluster: the URI grammar, claim mounts, pre-flight refusals."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from modelsmith import storagecheck
from modelsmith.api import uri
from modelsmith.api.datapipeline import DataPipelineSpec
from modelsmith.builders.owner import Owner
from modelsmith.builders.storage import claim_mounts, credentials_env
from modelsmith.conditions import Reason
from modelsmith.config import Settings
from modelsmith.contract import MOUNTS_ENV
from modelsmith.later import Later
from modelsmith.validation import uri_fields

SETTINGS = Settings("reg", "t")
INPUT = TypeAdapter(uri.Uri)
OUTPUT = TypeAdapter(uri.OutputUri)


@pytest.mark.parametrize(
    ("value", "scheme", "root", "path"),
    [
        ("pvc://data/shards/x", uri.Scheme.PVC, "data", "shards/x"),
        ("pvc://my.claim-1/a/", uri.Scheme.PVC, "my.claim-1", "a"),
        ("pvc://data", uri.Scheme.PVC, "data", ""),
        ("s3://bucket/prefix/x", uri.Scheme.S3, "bucket", "prefix/x"),
        ("s3://my.bucket-1", uri.Scheme.S3, "my.bucket-1", ""),
        ("gs://bucket/raw/*.jsonl", uri.Scheme.GS, "bucket", "raw/*.jsonl"),
        ("file:///data/x", uri.Scheme.NODE, "", "/data/x"),
        ("/data/x", uri.Scheme.NODE, "", "/data/x"),
    ],
)
def test_every_accepted_uri_form_parses(
    value: str, scheme: uri.Scheme, root: str, path: str
) -> None:
    assert INPUT.validate_python(value) == value
    assert uri.parse(value) == uri.Location(scheme, root, path)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://host/model", "must be pvc://"),
        ("hf://org/model", "must be pvc://"),
        ("ftp://x/y", "must be pvc://"),
        ("s3://ab/x", "buckets of 3 to 63"),
        ("s3://Bucket/x", "lower-case"),
        ("pvc://Claim/x", "lower-case"),
        ("pvc://-claim/x", "must be pvc://"),
        ("pvc://data//x", "must be pvc://"),
        ("file://relative/x", "must be pvc://"),
        ("relative/x", "must be pvc://"),
        ("pvc://data/../other", "'..' segment"),
        ("/data/..", "'..' segment"),
    ],
)
def test_every_refused_uri_form_says_what_is_allowed(value: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        INPUT.validate_python(value)


@pytest.mark.parametrize("value", ["pvc://data", "pvc://data/", "s3://bucket", "s3://bucket/"])
def test_an_output_needs_a_path_below_its_claim_or_bucket(value: str) -> None:
    assert INPUT.validate_python(value) == value
    with pytest.raises(ValidationError, match="needs a path below"):
        OUTPUT.validate_python(value)


def test_the_cel_rules_carry_the_same_regexes_as_python() -> None:
    schema = TypeAdapter(uri.OutputUri).json_schema()
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert rules == [
        f"self.matches(r'{uri.URI_REGEX}')",
        f"!self.matches(r'{uri.PARENT_REGEX}')",
        f"self.matches(r'{uri.PREFIXED_REGEX}')",
    ]


def test_node_paths_are_refused_unless_the_operator_allows_them() -> None:
    fields = {"spec.output.uri": "file:///data/out", "spec.sources[0].uri": "pvc://d/raw"}
    [error] = storagecheck.spec_errors(SETTINGS, fields)
    assert error.startswith("spec.output.uri: file:///data/out is a path on the node")
    assert "allowNodePaths" in error
    assert storagecheck.spec_errors(replace(SETTINGS, allow_node_paths=True), fields) == []


def test_uri_fields_finds_every_uri_with_where_it_is_set() -> None:
    spec = DataPipelineSpec.model_validate(
        {
            "sources": [
                {"uri": "pvc://d/a", "format": "text"},
                {"uri": "s3://bkt/b", "format": "text"},
            ],
            "tokenizer": {"existing": {"uri": "pvc://d/tok"}},
            "output": {"uri": "pvc://d/out"},
        }
    )
    assert uri_fields(spec) == {
        "spec.output.uri": "pvc://d/out",
        "spec.sources[0].uri": "pvc://d/a",
        "spec.sources[1].uri": "s3://bkt/b",
        "spec.tokenizer.existing.uri": "pvc://d/tok",
    }


def test_without_output_uri_the_default_store_names_namespace_kind_name_and_uid() -> None:
    store = replace(SETTINGS, default_storage="s3://store/prefix/")
    derived = storagecheck.output_uri(
        None, store, namespace="ml", kind="FineTune", name="chat", uid="u-1"
    )
    assert derived == "s3://store/prefix/ml/finetune/chat/u-1"
    assert storagecheck.output_uri("pvc://d/x", store, namespace="ml", kind="F", name="n", uid="u")
    assert (
        storagecheck.output_uri(None, SETTINGS, namespace="ml", kind="F", name="n", uid="u") is None
    )
    assert storagecheck.not_configured("FineTune").reason == Reason.STORAGE_NOT_CONFIGURED


@pytest.mark.parametrize("store", ["file:///data", "/data", "http://x"])
def test_a_default_store_must_be_a_claim_or_a_bucket(store: str) -> None:
    with pytest.raises(ValueError, match="pvc://, s3:// or"):
        Settings("reg", "t", default_storage=store)


def _table(mounts: Any) -> dict[str, str]:
    [env] = mounts.env_table()
    assert env["name"] == MOUNTS_ENV
    return dict(json.loads(env["value"]))


def test_the_output_claim_is_read_write_and_inputs_on_it_read_only() -> None:
    mounts = claim_mounts(
        "pvc://data/models/ft", ["pvc://data/models/base", "pvc://raw/chat.jsonl"]
    )
    assert mounts.volumes == [
        {"name": "claim-0", "persistentVolumeClaim": {"claimName": "data", "readOnly": False}},
        {"name": "claim-1", "persistentVolumeClaim": {"claimName": "raw", "readOnly": True}},
    ]
    assert mounts.mounts == [
        {"name": "claim-0", "mountPath": "/mnt/modelsmith/rw/data"},
        {"name": "claim-0", "mountPath": "/mnt/modelsmith/ro/data", "readOnly": True},
        {"name": "claim-1", "mountPath": "/mnt/modelsmith/ro/raw", "readOnly": True},
    ]
    assert _table(mounts) == {
        "pvc://data": "/mnt/modelsmith/rw/data",
        "pvc://data/models/base": "/mnt/modelsmith/ro/data/models/base",
        "pvc://raw": "/mnt/modelsmith/ro/raw",
    }


def test_object_storage_mounts_nothing_and_takes_keys_by_reference() -> None:
    mounts = claim_mounts("s3://bkt/out", ["s3://bkt/in"])
    assert mounts.volumes == mounts.mounts == []
    assert mounts.env_table() == []
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in credentials_env("keys")}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "keys", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "keys", "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["AWS_ENDPOINT_URL"] == {"name": "keys", "key": "AWS_ENDPOINT_URL", "optional": True}
    assert credentials_env(None) == []


def test_the_default_secret_is_for_object_storage_without_workload_identity() -> None:
    store = replace(SETTINGS, default_storage_secret="store-keys")
    s3, pvc = ["s3://bkt/x"], ["pvc://d/x"]
    assert storagecheck.secret_for(None, store, service_account=None, uris=s3) == "store-keys"
    assert storagecheck.secret_for(None, store, service_account="irsa", uris=s3) is None
    assert storagecheck.secret_for(None, store, service_account=None, uris=pvc) is None
    assert storagecheck.secret_for("own", store, service_account="irsa", uris=pvc) == "own"


def _pvc(*modes: str) -> dict[str, Any]:
    return {"spec": {"accessModes": list(modes)}}


def test_a_missing_claim_is_named_and_waited_for() -> None:
    refusal = storagecheck.claim_refusal("pvc://out/x", ["pvc://in/y"], {"out": _pvc("RWO")}, 1)
    assert refusal is not None
    assert (refusal.reason, refusal.retry) == (Reason.CLAIM_NOT_FOUND, True)
    assert "PersistentVolumeClaim in not found" in refusal.message


@pytest.mark.parametrize(
    ("output_modes", "input_modes", "pods", "refused"),
    [
        (["ReadWriteOnce"], ["ReadWriteOnce"], 1, False),
        (["ReadWriteOnce"], ["ReadOnlyMany"], 2, True),
        (["ReadWriteMany"], ["ReadWriteOnce"], 2, True),
        (["ReadWriteMany"], ["ReadOnlyMany"], 2, False),
        (["ReadWriteOncePod"], ["ReadWriteMany"], 4, True),
    ],
)
def test_more_than_one_pod_needs_claims_they_can_share(
    output_modes: list[str], input_modes: list[str], pods: int, refused: bool
) -> None:
    found = {"out": _pvc(*output_modes), "in": _pvc(*input_modes)}
    refusal = storagecheck.claim_refusal("pvc://out/x", ["pvc://in/y"], found, pods)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert refusal.reason == Reason.CLAIM_ACCESS_MODE
        assert f"this run has {pods} pods" in refusal.message


def test_a_missing_secret_is_named_and_waited_for() -> None:
    refusal = storagecheck.secret_refusal("keys", exists=False)
    assert refusal is not None and refusal.retry
    assert refusal.reason == Reason.SECRET_NOT_FOUND and "Secret keys" in refusal.message
    assert storagecheck.secret_refusal("keys", exists=True) is None
    assert storagecheck.secret_refusal(None, exists=False) is None


def test_an_output_inside_an_input_is_refused() -> None:
    assert storagecheck.nested_output("pvc://d/a/out", ["pvc://d/a"]) != []
    assert storagecheck.nested_output("pvc://d/a", ["pvc://d/a/in"]) != []
    assert storagecheck.nested_output("pvc://d/a-2", ["pvc://d/a"]) == []


def test_artifacts_gather_the_output_inputs_and_sources() -> None:
    spec = DataPipelineSpec.model_validate(
        {
            "sources": [{"uri": "pvc://raw/a.txt", "format": "text"}],
            "storage": {"secretRef": {"name": "k"}},
        }
    )
    owner = Owner("DataPipeline", "corpus", "ml", "u1")
    store = replace(SETTINGS, default_storage="pvc://store")
    got = storagecheck.artifacts(
        owner, spec, store, {"tokenizer": "s3://bkt/tok"}, uri_fields(spec)
    )
    assert got is not None
    assert got.output == "pvc://store/ml/datapipeline/corpus/u1"
    assert got.reads == ("pvc://raw/a.txt", "s3://bkt/tok")
    assert got.secret == "k"
    assert storagecheck.artifacts(owner, spec, SETTINGS, {}, uri_fields(spec)) is None


def test_later_runs_once_per_key_and_a_new_call_replaces_the_old() -> None:
    later, ran, done = Later(), [], threading.Event()
    later.call("a", 5, lambda: ran.append("first"))
    later.call("a", 0.01, lambda: (ran.append("second"), done.set()))
    assert done.wait(2)
    assert ran == ["second"]
    later.call("b", 5, lambda: ran.append("never"))
    later.cancel("b")
    assert later.pending() == set()
