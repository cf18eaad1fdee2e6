"""A name the API server accepts gives children it accepts too, and no longer one does.

Every child the builders make for a resource whose name has the kind's
`max_name_length` (with the most workers the schema allows) must have a name, label
values and pod hostnames that fit Kubernetes' 63-character DNS labels; one character
more must break one of them, so the limit the CRD enforces is the true one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from modelsmith.api import KINDS
from modelsmith.api.inference import INFERENCESERVICE, GatewayRef, InferenceServiceSpec
from modelsmith.api.meta import KindInfo
from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.builders.batch import (
    Artifacts,
    desired_configmap,
    desired_job,
    desired_ray_token,
    desired_service,
    task_config,
)
from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import (
    Revision,
    desired_hpa,
    desired_revision_configmap,
    desired_revision_deployment,
    desired_revision_service,
    revision_config,
    revision_name,
)
from modelsmith.builders.router import desired_router, desired_routes_configmap, route_table
from modelsmith.builders.traffic import desired_httproute, desired_kserve
from modelsmith.config import Settings
from modelsmith.routes import Split
from tests.helpers import sample_manifests

SETTINGS = Settings("registry.test/ms", "1.2.3")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
# What Kubernetes asks of each child's name: (pattern, most characters). A Job's name
# is a subdomain, but the Job controller puts it in a label on each of its pods.
NAME_SHAPE = {"Service": (DNS_1035, 63), "Job": (DNS_1123_LABEL, 63)}
ANY_OTHER = (DNS_1123_SUBDOMAIN, 253)


SPECS = {kind: doc["spec"] for kind, doc in sample_manifests().items()}


def _widest(kind: str) -> dict[str, Any]:
    """The sample's spec with as many workers as the schema allows."""
    spec = copy.deepcopy(SPECS[kind])
    if kind == "DataPipeline":
        spec["workers"] = _schema_max(kind, "workers")
        spec["engine"] = "ray"  # one child more: the Ray token Secret
    elif kind == "PretrainJob":
        nodes = _schema_max(kind, "distribution", "nodes")
        spec["distribution"] |= {"nodes": nodes, "launcher": "ray"}
        gpus = max(spec.get("resources", {}).get("gpus", 0), 1)
        spec["training"]["globalBatchSize"] = spec["training"]["microBatchSize"] * nodes * gpus
    return spec


def _schema_max(kind: str, *path: str) -> int:
    info = next(k for k in KINDS if k.kind == kind)
    node = info.spec.model_json_schema(by_alias=True)
    defs = node.get("$defs", {})
    for key in path:
        node = node["properties"][key]
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in node:
            node = defs[node["allOf"][0]["$ref"].rsplit("/", 1)[1]]
    return int(node["maximum"])


def _batch_children(kind: str, name: str) -> list[dict[str, Any]]:
    batch = next(k for k in BATCH_KINDS if k.info.kind == kind)
    owner = Owner(kind, name, "ns", "uid-1")
    spec = batch.parse(_widest(kind))
    layout = batch.layout(spec)
    artifacts = Artifacts("s3://bkt/out")
    config = task_config(owner, spec, {}, artifacts.output)
    children = [
        desired_configmap(owner, layout, config),
        desired_service(owner, layout),
        desired_job(owner, spec, layout, SETTINGS, artifacts),
        desired_ray_token(owner, layout, "token"),
    ]
    return [c for c in children if c is not None]


def _inference_children(_kind: str, name: str) -> list[dict[str, Any]]:
    owner = Owner(INFERENCESERVICE.kind, name, "ns", "uid-1")
    raw = SPECS["InferenceService"] | {"model": {"uri": "s3://bkt/model"}}
    raw["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3}
    spec = InferenceServiceSpec.model_validate(raw)
    revision = revision_name(name, spec, "s3://bkt/model")
    rev = Revision(revision, spec, "s3://bkt/model")
    assert spec.autoscaling is not None
    return [
        desired_revision_configmap(owner, revision, revision_config(owner, spec, rev.model_uri)),
        desired_revision_deployment(owner, rev, SETTINGS, None),
        desired_revision_service(owner, revision),
        desired_hpa(owner, revision, spec.autoscaling),
        desired_routes_configmap(owner, route_table(owner, Split(revision))),
        *desired_router(owner, SETTINGS),
        desired_httproute(owner, GatewayRef(name="gw"), Split(revision)),
        desired_kserve(owner, rev, SETTINGS, None),
    ]


BUILDERS: dict[str, Callable[[str, str], list[dict[str, Any]]]] = {
    k.info.kind: _batch_children for k in BATCH_KINDS
} | {INFERENCESERVICE.kind: _inference_children}


def _misfits(children: list[dict[str, Any]]) -> list[str]:
    """Every name, label value and pod hostname the API server would refuse."""
    found = []
    for child in children:
        kind, meta = child["kind"], child["metadata"]
        name = meta["name"]
        shape, most = NAME_SHAPE.get(kind, ANY_OTHER)
        if len(name) > most or not shape.match(name):
            found.append(f"{kind} name {name!r} ({len(name)})")
        template = child.get("spec", {}).get("template", {})
        labels = {**meta.get("labels", {}), **template.get("metadata", {}).get("labels", {})}
        found += [
            f"{kind} label {key}={value!r} ({len(value)})"
            for key, value in labels.items()
            if len(value) > 63
        ]
        if kind == "Job" and child["spec"].get("completionMode") == "Indexed":
            last = f"{name}-{child['spec']['completions'] - 1}"  # the Job controller's hostname
            if len(last) > 63 or not DNS_1123_LABEL.match(last):
                found.append(f"pod hostname {last!r} ({len(last)})")
    return found


@pytest.mark.parametrize("info", KINDS, ids=[k.kind for k in KINDS])
def test_the_longest_name_allowed_gives_children_the_api_server_accepts(info: KindInfo) -> None:
    name = "a" * info.max_name_length
    assert info.name_errors(name) == []
    assert _misfits(BUILDERS[info.kind](info.kind, name)) == []


@pytest.mark.parametrize("info", KINDS, ids=[k.kind for k in KINDS])
def test_one_character_more_would_give_a_child_the_api_server_refuses(info: KindInfo) -> None:
    name = "a" * (info.max_name_length + 1)
    (error,) = info.name_errors(name)
    assert f"at most {info.max_name_length} characters" in error
    assert info.longest_child.pattern in error
    assert _misfits(BUILDERS[info.kind](info.kind, name)), "the limit is not the tight one"


@pytest.mark.parametrize("name", ["7b-chat", "chat.v2", "Chat", "chat-"])
def test_names_that_are_not_dns_1035_labels_are_refused(name: str) -> None:
    for info in KINDS:
        (error,) = info.name_errors(name)
        assert "DNS-1035 label" in error, (info.kind, error)


def test_the_crd_carries_the_same_rules_the_operator_checks() -> None:
    from modelsmith import crdgen

    for info in KINDS:
        root = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        rules = [(r["rule"], r["message"]) for r in root["x-kubernetes-validations"]]
        assert rules == info.name_rules()
        assert f"self.metadata.name.size() <= {info.max_name_length}" in rules[0][0]


def test_the_operator_refuses_a_stored_name_the_crd_would_have_refused() -> None:
    """An object stored before the CRD had the rule: InvalidSpec with the rule's own
    words, not a child refused later under a message about something else."""
    from modelsmith.validation import semantic_errors

    kind = next(k for k in BATCH_KINDS if k.info.kind == "DataPipeline")
    spec = kind.parse(_widest("DataPipeline"))
    too_long = "a" * (kind.info.max_name_length + 1)
    assert semantic_errors(kind, too_long, spec) == kind.info.name_errors(too_long) != []
    assert semantic_errors(kind, "corpus", spec) == []
