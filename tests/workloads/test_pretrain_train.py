"""`modelsmith-runtime pretrain` as real processes: train, publish, distribute, resume.

One uninterrupted single-process run is the reference the other runs are held to:
a 2-rank DDP or FSDP run sees the same global batches and must land on the same
loss, and a run killed with SIGKILL and restarted must land on exactly it.

A training process spends most of its life importing torch and transformers on one
core, so the single-process runs are started together, two at a time, once per
module; the tests then check what each produced.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, pod_env, run_component
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset, train_records

CLI = [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain"]
MOE = {"type": "moe", "experts": 4, "topK": 2, "intermediateSize": 128, "auxLossCoef": 0.01}


@dataclass(frozen=True)
class Resumed:
    killed_at: int
    """The step of the newest checkpoint the SIGKILLed run left behind."""
    published_before_rerun: bool
    rerun: Run
    checkpoints: Path


@dataclass(frozen=True)
class Runs:
    reference: Run
    moe: Run
    resumed: Resumed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    uri = str(tmp_path_factory.mktemp("data") / "dataset")
    return uri, publish_dataset(uri)


def _kill_after_first_checkpoint(config: dict[str, Any], workdir: Path) -> int:
    """Start a run, SIGKILL it once a checkpoint is committed; returns that step."""
    checkpoints = Path(f"{config['output']}-checkpoints")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "task.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["MODELSMITH_TERMINATION_LOG"] = str(workdir / "killed-termination-log")
    with (workdir / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [*CLI, f"--task-config={workdir / 'task.json'}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while not (checkpoints / "latest").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("no checkpoint within 180 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:
            pytest.fail(f"the run ended ({proc.returncode}) before it could be killed")
    return int((checkpoints / "latest").read_text().removeprefix("step-"))


def _kill_and_resume(config: dict[str, Any], workdir: Path) -> Resumed:
    killed_at = _kill_after_first_checkpoint(config, workdir)
    published = Path(config["output"]).exists()
    rerun = run_component("pretrain", config, workdir)
    return Resumed(killed_at, published, rerun, Path(f"{config['output']}-checkpoints"))


@pytest.fixture(scope="module")
def runs(dataset: tuple[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("runs")
    uri = dataset[0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        resumed = pool.submit(
            _kill_and_resume, pretrain_config(uri, str(root / "b" / "model")), root / "b"
        )
        reference = pool.submit(
            run_component, "pretrain", pretrain_config(uri, str(root / "a" / "model")), root / "a"
        )
        moe = pool.submit(
            run_component,
            "pretrain",
            pretrain_config(uri, str(root / "moe" / "model"), architecture=MOE),
            root / "moe",
        )
        done = Runs(reference.result(), moe.result(), resumed.result())
    assert done.reference.returncode == 0, done.reference.output
    return done


def _losses(run: Run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(run.output)}


def test_dense_loss_decreases_and_result_describes_the_model(
    runs: Runs, dataset: tuple[str, dict[str, Any]]
) -> None:
    result = runs.reference.result
    assert result is not None and result.error is None
    output = Path(result.uri or "")
    assert result.digest == artifact_digest(output)
    assert result.progress is not None and (result.progress.step, result.progress.total) == (40, 40)
    metrics = result.metrics
    assert metrics["steps"] == 40
    assert metrics["tokens"] == 40 * 8 * 64
    assert metrics["tokens_per_second"] > 0
    losses = _losses(runs.reference)
    assert sorted(losses) == [1, 10, 20, 30, 40]
    assert losses[1] == pytest.approx(math.log(dataset[1]["vocabSize"]), abs=0.3)  # random init
    assert losses[40] == metrics["loss"]
    assert metrics["initial_loss"] == losses[1], "the first step's loss, for 'the loss fell'"
    assert metrics["loss"] < losses[1] - 2.0
    assert losses[10] > losses[20] > losses[40]
    checkpoints = Path(f"{output}-checkpoints")
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step-00000030",
        "step-00000040",
    ]  # keepLast: 2


def test_output_is_a_hugging_face_model_with_the_datasets_tokenizer(
    runs: Runs, dataset: tuple[str, dict[str, Any]]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = Path(runs.reference.result.uri or "") if runs.reference.result else Path()
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 64)
    assert config["vocab_size"] == dataset[1]["vocabSize"]
    assert (output / "model.safetensors").is_file()
    assert (output / "generation_config.json").is_file()
    assert (output / COMPLETION_MARKER).is_file()

    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoModelForCausalLM.from_pretrained(output)
    assert config["eos_token_id"] == tokenizer.eos_token_id is not None
    prompt = tokenizer("The cat sees", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] == prompt.input_ids.shape[1] + 6
    assert tokenizer.decode(generated[0]).startswith("The cat sees")

    # The published weights are the trained ones: their loss on text of the training
    # distribution is far below a random model's log(vocab).
    text = "The old man follows the long river in the park. A dog likes a warm bed at home."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < math.log(dataset[1]["vocabSize"]) - 2.0


def test_moe_trains_with_load_balancing_loss(runs: Runs) -> None:
    assert runs.moe.returncode == 0, runs.moe.output
    records = train_records(runs.moe.output)
    assert records[-1]["loss"] < records[0]["loss"] - 2.0
    # Switch-style balance loss: top_k (2) when routing is uniform, up to experts x top_k.
    assert all(1.0 < r["aux_loss"] < 4 * 2 for r in records)
    assert runs.moe.result is not None and runs.moe.result.uri
    saved = json.loads((Path(runs.moe.result.uri) / "config.json").read_text())
    assert saved["architectures"] == ["MixtralForCausalLM"]
    assert (saved["num_local_experts"], saved["num_experts_per_tok"]) == (4, 2)
    assert saved["router_aux_loss_coef"] == 0.01


def test_killed_run_resumes_from_its_checkpoint_to_the_same_loss(runs: Runs) -> None:
    resumed, reference = runs.resumed, runs.reference
    assert 10 <= resumed.killed_at < 40
    assert not resumed.published_before_rerun
    assert resumed.rerun.returncode == 0, resumed.rerun.output
    assert f"resuming from step {resumed.killed_at} of 40" in resumed.rerun.output
    assert resumed.rerun.result is not None and reference.result is not None
    final = resumed.rerun.result.metrics["loss"]
    assert final == pytest.approx(reference.result.metrics["loss"], abs=1e-5)
    assert resumed.rerun.result.metrics["resumed_from_step"] == resumed.killed_at
    assert "resumed_from_step" not in reference.result.metrics
    first = resumed.rerun.result.metrics["initial_loss"]  # from the checkpoint, not step 11
    assert first == pytest.approx(reference.result.metrics["initial_loss"], abs=1e-5)
    mine, theirs = _losses(resumed.rerun), _losses(reference)
    assert min(mine) == resumed.killed_at + 1  # the first step after the checkpoint
    for step, loss in mine.items():
        if step in theirs:
            assert loss == pytest.approx(theirs[step], abs=1e-5), step
    assert sorted(p.name for p in resumed.checkpoints.iterdir()) == [
        "latest",
        "step-00000030",
        "step-00000040",
    ]


@pytest.mark.parametrize(
    ("strategy", "architecture"), [("ddp", "LlamaForCausalLM"), ("fsdp", "MixtralForCausalLM")]
)
def test_two_rank_torchrun_matches_the_single_process_run(
    strategy: str,
    architecture: str,
    runs: Runs,
    dataset: tuple[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """Same global batch (2 ranks x 4 instead of 2 micro-batches x 4): unless the ranks
    read disjoint halves of the same batches and average gradients, losses drift.
    FSDP2 trains the MoE, whose 3-D expert tensors it shards like any other."""
    moe = architecture == "MixtralForCausalLM"
    output = tmp_path / "model"
    config = pretrain_config(
        dataset[0],
        str(output),
        architecture=MOE if moe else None,
        distribution={"strategy": strategy},
        resources={"gpus": 2},
    )
    run = run_component("pretrain", config, tmp_path, env=pod_env(2))
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.digest == artifact_digest(output)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    saved = re.findall(r"checkpoint \S+/step-(\d+) saved", run.output)
    assert saved == ["00000010", "00000020", "00000030", "00000040"]  # rank 0 logs them
    mine, theirs = _losses(run), _losses(runs.moe if moe else runs.reference)
    assert mine.keys() == theirs.keys()
    for step, loss in theirs.items():
        assert mine[step] == pytest.approx(loss, abs=1e-4), step
    config_json = json.loads((output / "config.json").read_text())
    assert config_json["architectures"] == [architecture]
    assert (output / "tokenizer.json").is_file()
