from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith.api.datapipeline import DataPipelineSpec
from modelsmith.api.pretrain import PretrainJobSpec
from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.builders.batch import (
    Artifacts,
    Layout,
    desired_configmap,
    desired_job,
    desired_ray_token,
    desired_service,
    task_config,
)
from modelsmith.builders.owner import Owner
from modelsmith.config import Settings

OWNER = Owner("DataPipeline", "corpus", "ml", "uid-1")
SETTINGS = Settings(image_registry="registry.test/ms", image_tag="1.2.3")
OUT = Artifacts("s3://bkt/out")
KIND = {k.info.kind: k for k in BATCH_KINDS}


def _data(**extra: object) -> DataPipelineSpec:
    return DataPipelineSpec.model_validate(
        {"sources": [{"uri": "s3://bkt/raw", "format": "jsonl"}], "output": {"uri": "s3://bkt/out"}}
        | extra
    )


def _pretrain(gpus: int = 8, **distribution: object) -> PretrainJobSpec:
    return PretrainJobSpec.model_validate(
        {
            "dataset": {"fromRef": {"kind": "DataPipeline", "name": "corpus"}},
            "architecture": {"layers": 2, "hiddenSize": 128, "heads": 4},
            "training": {
                "globalBatchSize": 96,
                "microBatchSize": 2,
                "learningRate": 1e-3,
                "steps": 10,
            },
            "distribution": distribution,
            "resources": {"gpus": gpus},
            "output": {"uri": "/m"},
        }
    )


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(job)["env"]}


def test_data_job_is_indexed_owned_and_deterministic() -> None:
    layout = KIND["DataPipeline"].layout(_data(workers=4))
    job = desired_job(OWNER, _data(workers=4), layout, SETTINGS, OUT)
    assert job == desired_job(OWNER, _data(workers=4), layout, SETTINGS, OUT)
    assert job["metadata"]["name"] == "corpus-run"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["backoffLimitPerIndex"] == 3
    assert job["spec"]["maxFailedIndexes"] == 0, "one worker out of retries fails the run"
    assert "backoffLimit" not in job["spec"]
    ref = job["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("DataPipeline", "uid-1", True)
    assert _container(job)["image"] == "registry.test/ms/data:1.2.3"
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "corpus-task"
    assert "MASTER_ADDR" not in _env(job)


def test_gpus_are_requested_only_when_asked_for() -> None:
    cpu = desired_job(OWNER, _data(), Layout("data", "data", 1, 0), SETTINGS, OUT)
    assert "nvidia.com/gpu" not in _container(cpu)["resources"]["requests"]
    gpu = desired_job(OWNER, _data(), Layout("data", "data", 1, 2), SETTINGS, OUT)
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_multinode_pretraining_gets_torchrun_rendezvous_and_a_headless_service() -> None:
    spec = _pretrain(nodes=2, gpus=8)
    owner = Owner("PretrainJob", "llm", "ml", "uid-2")
    layout = KIND["PretrainJob"].layout(spec)
    assert layout == Layout("trainer", "pretrain", workers=2, gpus_per_worker=8, torchrun=True)
    job = desired_job(owner, spec, layout, SETTINGS, OUT)
    env = _env(job)
    assert env["MASTER_ADDR"] == "llm-run-0.llm-workers"
    assert (env["NNODES"], env["NPROC_PER_NODE"], env["MASTER_PORT"]) == ("2", "8", "29500")
    assert job["spec"]["template"]["spec"]["subdomain"] == "llm-workers"
    service = desired_service(owner, layout)
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "llm-run"}
    assert desired_service(owner, Layout("trainer", "pretrain", 1, 8)) is None


def test_a_pretrainjob_without_gpus_runs_one_cpu_process_per_pod() -> None:
    spec = _pretrain(gpus=0, strategy="ddp")
    layout = KIND["PretrainJob"].layout(spec)
    assert layout.gpus_per_worker == 0
    job = desired_job(Owner("PretrainJob", "cpu", "ml", "uid-3"), spec, layout, SETTINGS, OUT)
    resources = _container(job)["resources"]
    assert "nvidia.com/gpu" not in resources["requests"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert _env(job)["NPROC_PER_NODE"] == "1"


def test_scheduling_fields_and_run_policy_reach_the_pod() -> None:
    spec = _data(
        nodeSelector={"pool": "cpu"},
        tolerations=[{"key": "spot", "operator": "Exists"}],
        priorityClassName="batch-low",
        serviceAccountName="reader",
        env=[{"name": "HF_HOME", "value": "/cache"}],
        runPolicy={"backoffLimit": 0, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 60},
        image="mine/data:dev",
        suspend=True,
        podMetadata={
            "labels": {"team": "ml", "app.kubernetes.io/instance": "spoof"},
            "annotations": {"prometheus.io/scrape": "true"},
        },
    )
    job = desired_job(OWNER, spec, Layout("data", "data", 1, 0), SETTINGS, OUT)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert (pod["priorityClassName"], pod["serviceAccountName"]) == ("batch-low", "reader")
    assert _env(job)["HF_HOME"] == "/cache"
    assert job["spec"]["backoffLimitPerIndex"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    assert job["spec"]["suspend"] is True
    assert _container(job)["image"] == "mine/data:dev"
    template = job["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "ml"
    assert template["labels"]["app.kubernetes.io/instance"] == "corpus", "ours win"
    assert template["annotations"] == {"prometheus.io/scrape": "true"}


def test_configmap_holds_resolved_inputs_and_the_spec() -> None:
    config = task_config(OWNER, _data(workers=2), {"tokenizer": "/tok"}, "s3://bkt/out")
    cm = desired_configmap(OWNER, Layout("data", "data", 2, 0), config)
    loaded = json.loads(cm["data"]["task.json"])
    assert loaded == config
    assert loaded["inputs"] == {"tokenizer": "/tok"}
    assert loaded["spec"]["workers"] == 2


SAMPLES = Path(__file__).resolve().parents[2] / "samples"
EXPECTED_REFS = {
    "PretrainJob": {"dataset": "DataPipeline/tiny-corpus"},
    "FineTune": {"baseModel": "PretrainJob/tiny-llama"},
    "QuantizeJob": {"model": "FineTune/tiny-llama-chat"},
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_REFS))
def test_each_sample_names_its_upstream_as_an_input(kind: str) -> None:
    doc = next(
        d for d in yaml.safe_load_all((SAMPLES / "chain.yaml").read_text()) if d["kind"] == kind
    )
    batch = KIND[kind]
    inputs = batch.inputs(batch.parse(doc["spec"]))
    refs = {
        name: f"{i.from_ref.kind}/{i.from_ref.name}"
        for name, i in inputs.items()
        if i is not None and i.from_ref is not None
    }
    assert refs == EXPECTED_REFS[kind]


def test_bad_input_fails_the_run_and_preemption_costs_no_retry() -> None:
    job = desired_job(OWNER, _data(), Layout("data", "data", 1, 0), SETTINGS, OUT)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never", "podFailurePolicy needs it"
    attempt = _env(job)["MODELSMITH_ATTEMPT"]["fieldRef"]["fieldPath"]
    assert attempt == "metadata.annotations['batch.kubernetes.io/job-index-failure-count']"


def test_pods_get_a_projected_token_for_progress_reports_only_when_configured() -> None:
    plain = desired_job(OWNER, _data(), Layout("data", "data", 1, 0), SETTINGS, OUT)
    assert "MODELSMITH_STATUS_URL" not in _env(plain)
    settings = Settings("r", "t", status_url="http://ms.system.svc:8081")
    job = desired_job(OWNER, _data(), Layout("data", "data", 1, 0), settings, OUT)
    assert _env(job)["MODELSMITH_STATUS_URL"] == "http://ms.system.svc:8081"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    token = volumes["status-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "modelsmith.io/status"
    mounts = {m["name"]: m["mountPath"] for m in _container(job)["volumeMounts"]}
    assert _env(job)["MODELSMITH_STATUS_TOKEN_FILE"] == mounts["status-token"] + "/token"


def test_fine_tuning_on_several_gpus_is_one_process_without_torchrun_env() -> None:
    from modelsmith.api.finetune import FineTuneSpec

    spec = FineTuneSpec.model_validate(
        {
            "baseModel": {"uri": "/m"},
            "dataset": {"uri": "/d.jsonl"},
            "resources": {"gpus": 4},
            "output": {"uri": "/o"},
        }
    )
    layout = KIND["FineTune"].layout(spec)
    assert (layout.workers, layout.gpus_per_worker, layout.torchrun) == (1, 4, False)
    env = _env(desired_job(OWNER, spec, layout, SETTINGS, OUT))
    assert "NPROC_PER_NODE" not in env and "MASTER_ADDR" not in env


def test_ray_runs_form_a_cluster_around_pod_0_and_finish_when_pod_0_does() -> None:
    owner = Owner("PretrainJob", "big", "ml", "uid-2")
    kind = KIND["PretrainJob"]
    layout = kind.layout(_pretrain(nodes=3, gpus=8, launcher="ray"))
    assert layout.ray and not layout.torchrun
    job = desired_job(owner, _pretrain(nodes=3, launcher="ray"), layout, SETTINGS, OUT)
    env = _env(job)
    assert env["MODELSMITH_RAY_HEAD"] == "big-run-0.big-workers"
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": "big-ray-token", "key": "token"}}
    # Ray places the training workers itself: no torchrun rendezvous, no torchrun ranks.
    assert not {"MASTER_ADDR", "NNODES", "NPROC_PER_NODE"} & env.keys()
    assert job["spec"]["successPolicy"] == {
        "rules": [{"succeededIndexes": "0", "succeededCount": 1}]
    }
    assert job["spec"]["template"]["spec"]["subdomain"] == "big-workers"
    service = desired_service(owner, layout)
    assert service is not None and service["spec"]["ports"] == [{"name": "ray", "port": 6379}]
    secret = desired_ray_token(owner, layout, "t0ken")
    assert secret is not None
    assert secret["stringData"] == {"token": "t0ken"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-2"


def test_only_ray_runs_get_a_token_and_single_pod_ray_needs_no_success_policy() -> None:
    torchrun = KIND["PretrainJob"].layout(_pretrain(nodes=2))
    assert desired_ray_token(OWNER, torchrun, "t") is None
    data_ray = KIND["DataPipeline"].layout(_data(engine="ray"))
    assert data_ray.ray and data_ray.workers == 1
    job = desired_job(OWNER, _data(engine="ray"), data_ray, SETTINGS, OUT)
    assert "successPolicy" not in job["spec"]
    assert "MODELSMITH_RAY_HEAD" in _env(job)


def test_distributed_pods_get_a_memory_backed_dev_shm() -> None:
    spec = _pretrain(nodes=2)
    job = desired_job(OWNER, spec, KIND["PretrainJob"].layout(spec), SETTINGS, OUT)
    pod = job["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in _container(job)["volumeMounts"]  # noqa: S108
    single = desired_job(OWNER, _data(), KIND["DataPipeline"].layout(_data()), SETTINGS, OUT)
    assert all(v["name"] != "dshm" for v in single["spec"]["template"]["spec"]["volumes"])
