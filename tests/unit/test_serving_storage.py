"""How a server pod gets its model: a claim mounted read-only, or fetched before it starts."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from modelsmith.api.inference import InferenceServiceSpec
from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import (
    MODEL_BYTES_ANNOTATION,
    Revision,
    desired_revision_configmap,
    desired_revision_deployment,
    model_volume_size,
    revision_name,
)
from modelsmith.builders.traffic import desired_kserve
from modelsmith.config import Settings
from modelsmith.contract import MOUNTS_ENV

OWNER = Owner("InferenceService", "chat", "ml", "uid-1")
SETTINGS = Settings("registry.test/ms", "1.2.3", default_storage_secret="store-keys")


def _pod(model: str, **spec: Any) -> dict[str, Any]:
    parsed = InferenceServiceSpec.model_validate({"model": {"uri": model}} | spec)
    rev = Revision(revision_name("chat", parsed, model), parsed, model)
    pod: dict[str, Any] = desired_revision_deployment(OWNER, rev, SETTINGS, 1)["spec"]["template"][
        "spec"
    ]
    return pod


def test_a_claim_model_is_mounted_read_only_and_found_through_the_table() -> None:
    pod = _pod("pvc://models/chat/v1")
    assert pod["volumes"][0] == {
        "name": "claim-0",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    server = pod["containers"][0]
    assert {"name": "claim-0", "mountPath": "/mnt/modelsmith/ro/models", "readOnly": True} in (
        server["volumeMounts"]
    )
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert json.loads(env[MOUNTS_ENV]) == {"pvc://models": "/mnt/modelsmith/ro/models"}
    assert "initContainers" not in pod
    assert pod["securityContext"]["fsGroup"] == 10001


@pytest.mark.parametrize("runtime", ["vllm", "kserve"])
def test_other_runtimes_get_the_mounted_path_as_their_model_flag(runtime: str) -> None:
    args = _pod("pvc://models/chat/v1", runtime=runtime)["containers"][0]["args"]
    assert any(a.endswith("=/mnt/modelsmith/ro/models/chat/v1") for a in args), args


def test_an_object_store_model_is_fetched_by_an_init_container_before_the_server() -> None:
    pod = _pod("s3://models-bucket/chat/v1", storage={"scratchSize": "20Gi"})
    [fetch] = pod["initContainers"]
    assert fetch["image"] == "registry.test/ms/server:1.2.3"
    assert fetch["args"] == [
        "fetch",
        "--uri=s3://models-bucket/chat/v1",
        "--dest=/mnt/modelsmith/model",
    ]
    keys = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in fetch["env"] if "valueFrom" in e
    }
    assert keys["AWS_ACCESS_KEY_ID"] == "store-keys"
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"] == {"name": "model", "emptyDir": {"sizeLimit": "20Gi"}}
    server = pod["containers"][0]
    assert {"name": "model", "mountPath": "/mnt/modelsmith/model", "readOnly": True} in (
        server["volumeMounts"]
    )
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert json.loads(env[MOUNTS_ENV]) == {"s3://models-bucket/chat/v1": "/mnt/modelsmith/model"}
    assert not any("valueFrom" in e for e in server["env"]), "only the fetch holds the keys"


def test_workload_identity_replaces_the_default_secret() -> None:
    pod = _pod("s3://models-bucket/chat/v1", serviceAccountName="s3-reader")
    assert pod["serviceAccountName"] == "s3-reader"
    assert not any("valueFrom" in e for e in pod["initContainers"][0]["env"])


def test_kserve_gets_the_same_init_container_and_volumes() -> None:
    parsed = InferenceServiceSpec.model_validate({"model": {"uri": "s3://models-bucket/m"}})
    rev = Revision("chat-x", parsed, "s3://models-bucket/m")
    predictor = desired_kserve(OWNER, rev, SETTINGS, None)["spec"]["predictor"]
    assert predictor["initContainers"][0]["name"] == "fetch-model"
    assert "model" in yaml.safe_dump(predictor["volumes"])


@pytest.mark.parametrize(
    ("model_bytes", "scratch", "size"),
    [
        (None, "4Gi", "4Gi"),
        (10 * 2**30, "4Gi", "11776Mi"),  # 10 GiB + 10% + 512 MiB
        (2**20, "4Gi", "4Gi"),
        (3 * 2**30, "1G", "3892Mi"),
    ],
)
def test_a_fetched_model_gets_room_for_its_reported_size(
    model_bytes: int | None, scratch: str, size: str
) -> None:
    spec = InferenceServiceSpec.model_validate(
        {"model": {"uri": "s3://models-bucket/m"}, "storage": {"scratchSize": scratch}}
    )
    assert model_volume_size(spec, model_bytes) == size
    rev = Revision("chat-x", spec, "s3://models-bucket/m", model_bytes)
    pod = desired_revision_deployment(OWNER, rev, SETTINGS, 1)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["emptyDir"]["sizeLimit"] == size
    assert pod["initContainers"][0]["resources"]["requests"]["ephemeral-storage"] == size


def test_the_reported_size_is_kept_with_the_revision() -> None:
    config = desired_revision_configmap(OWNER, "chat-x", {}, 123)
    assert config["metadata"]["annotations"] == {MODEL_BYTES_ANNOTATION: "123"}
    assert "annotations" not in desired_revision_configmap(OWNER, "chat-x", {})["metadata"]
