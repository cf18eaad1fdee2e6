from __future__ import annotations

import json

from modelsmith.api.datapipeline import DataPipelineSpec
from modelsmith.builders.datapipeline import (
    Owner,
    desired_configmap,
    desired_job,
    task_config,
)
from modelsmith.config import Settings

OWNER = Owner("DataPipeline", "corpus", "ml", "uid-1")
SETTINGS = Settings(image_registry="registry.test/ms", image_tag="1.2.3")


def _spec(**extra: object) -> DataPipelineSpec:
    return DataPipelineSpec.model_validate(
        {"sources": [{"uri": "s3://b/raw", "format": "jsonl"}], "output": {"uri": "s3://b/out"}}
        | extra
    )


def test_job_is_indexed_owned_and_deterministic() -> None:
    job = desired_job(OWNER, _spec(workers=4), SETTINGS)
    assert job == desired_job(OWNER, _spec(workers=4), SETTINGS)
    assert job["metadata"]["name"] == "corpus-data"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    ref = job["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("DataPipeline", "uid-1", True)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.test/ms/data:1.2.3"
    assert pod["volumes"][0]["configMap"]["name"] == "corpus-task"


def test_gpus_are_requested_only_when_asked_for() -> None:
    cpu = desired_job(OWNER, _spec(), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["requests"]
    gpu_spec = _spec(resources={"gpus": 2, "cpu": "8", "memory": "64Gi"})
    gpu = desired_job(OWNER, gpu_spec, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert gpu["resources"]["requests"]["cpu"] == "8"


def test_image_override_and_suspend_reach_the_job() -> None:
    job = desired_job(OWNER, _spec(image="mine/data:dev", suspend=True), SETTINGS)
    assert job["spec"]["suspend"] is True
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "mine/data:dev"


def test_configmap_holds_the_task_config_in_camel_case() -> None:
    cm = desired_configmap(OWNER, _spec(workers=2))
    config = json.loads(cm["data"]["task.json"])
    assert config == task_config(OWNER, _spec(workers=2))
    assert config["spec"]["workers"] == 2
    assert config["spec"]["output"] == {"uri": "s3://b/out"}
