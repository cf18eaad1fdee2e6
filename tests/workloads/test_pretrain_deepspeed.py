"""`modelsmith-runtime pretrain` with strategy deepspeed (ZeRO 1-3) as real processes.

ZeRO changes where the optimizer state, the gradients and (stage 3) the weights live,
not the arithmetic: the optimizer and schedule are the other strategies' and the ranks
see the same global batches. So in fp32 on the CPU every ZeRO run is held to the
single-process DDP run of the same tiny config, step by step and weight by weight,
within 1e-4 (what test_pretrain_train.py allows a 2-rank DDP run: a gloo all-reduce
sums in another order than one process does); and a resumed run to the uninterrupted
run of the same strategy and ranks within 1e-6, since there nothing reorders the sums
and anything lost at a resume (optimizer moments, the learning rate, the data
position) shows from the third decimal on.

A run here spends most of its time importing torch, transformers and DeepSpeed, so
all runs start together, two at a time, once per module (about three minutes on two
cores); the tests then check what each produced.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import ExitCode
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, pod_env, run_component
from tests.workloads.tiny_dataset import (
    pretrain_config,
    publish_dataset,
    train_records,
)

CLI = [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain"]
MOE = {"type": "moe", "experts": 4, "topK": 2, "intermediateSize": 128, "auxLossCoef": 0.01}
ZERO2 = {"distribution": {"strategy": "deepspeed", "zeroStage": 2}, "resources": {"gpus": 2}}
ZERO3_OFFLOAD = {
    "distribution": {"strategy": "deepspeed", "zeroStage": 3, "offload": "cpu"},
    "resources": {"gpus": 2},
}
ZERO1 = {"distribution": {"strategy": "deepspeed", "zeroStage": 1}, "resources": {"gpus": 1}}


@dataclass(frozen=True)
class Killed:
    step: int
    """The newest committed checkpoint when every process of the run was SIGKILLed."""
    published: bool
    rerun: Run


@dataclass(frozen=True)
class RolledBack:
    first: Run
    rerun: Run
    """The same run again after its `latest` pointer was moved back one checkpoint."""
    checkpoints: Path


@dataclass(frozen=True)
class Runs:
    reference: Run
    zero2: Run
    zero3_offload: Run
    killed: Killed
    zero1: RolledBack


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    uri = str(tmp_path_factory.mktemp("data") / "dataset")
    return uri, publish_dataset(uri)


def _kill_whole_run_after_a_checkpoint(config: dict[str, Any], workdir: Path) -> int:
    """Start a 2-rank run, then SIGKILL the launcher, torchrun and both ranks together
    (as a pod is killed) once a checkpoint is committed; returns that step. torchrun
    puts its ranks in sessions of their own, so the process tree is killed by pid."""
    import psutil  # a dependency of DeepSpeed

    checkpoints = Path(f"{config['output']}-checkpoints")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "task.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **pod_env(2)}
    env["MODELSMITH_TERMINATION_LOG"] = str(workdir / "killed-termination-log")
    with (workdir / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [*CLI, f"--task-config={workdir / 'task.json'}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while not (checkpoints / "latest").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        gone = (ProcessLookupError, psutil.NoSuchProcess)
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        for pid in tree:
            with contextlib.suppress(*gone):
                os.kill(pid, signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:
            pytest.fail(f"the run ended ({proc.returncode}) before it could be killed")
        for pid in tree[1:]:
            with contextlib.suppress(*gone):
                psutil.Process(pid).wait(timeout=30)
    if not (checkpoints / "latest").exists():
        pytest.fail("no checkpoint within 300 s")
    return int((checkpoints / "latest").read_text().removeprefix("step-"))


def _killed_and_resumed(config: dict[str, Any], workdir: Path) -> Killed:
    step = _kill_whole_run_after_a_checkpoint(config, workdir)
    published = Path(config["output"]).exists()
    return Killed(step, published, run_component("pretrain", config, workdir, env=pod_env(2)))


def _rolled_back(config: dict[str, Any], workdir: Path, checkpoints: Path) -> RolledBack:
    every_step = {"MODELSMITH_LOG_EVERY": "1"}
    first = run_component("pretrain", config, workdir, env=every_step)
    if first.returncode == 0:
        (checkpoints / "latest").write_text("step-00000010")
    rerun = run_component("pretrain", config, workdir, env=every_step)
    return RolledBack(first, rerun, checkpoints)


@pytest.fixture(scope="module")
def runs(dataset: tuple[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("runs")
    uri = dataset[0]

    def config(name: str, **kwargs: Any) -> dict[str, Any]:
        return pretrain_config(uri, str(root / name / "model"), **kwargs)

    # fsspec's local:// is not a local path to uris.local_path: it takes the code
    # path of s3:// and gs:// (DeepSpeed writes to a scratch folder, then uploads).
    remote = pretrain_config(
        uri,
        "s3://bucket/model",
        architecture=MOE,
        training={"steps": 20},
        precision="bf16",
        **ZERO1,
    )
    remote["output"] = f"local://{root / 'zero1' / 'model'}"
    with ThreadPoolExecutor(max_workers=2) as pool:
        reference = pool.submit(run_component, "pretrain", config("ref"), root / "ref")
        zero1 = pool.submit(
            _rolled_back, remote, root / "zero1", root / "zero1" / "model-checkpoints"
        )
        zero2 = pool.submit(
            run_component, "pretrain", config("z2", **ZERO2), root / "z2", env=pod_env(2)
        )
        zero3 = pool.submit(
            run_component,
            "pretrain",
            config("z3", **ZERO3_OFFLOAD),
            root / "z3",
            env=pod_env(2),
        )
        killed = pool.submit(_killed_and_resumed, config("kill", **ZERO2), root / "kill")
        done = Runs(
            reference.result(), zero2.result(), zero3.result(), killed.result(), zero1.result()
        )
    assert done.reference.returncode == 0, done.reference.output
    return done


def _losses(run: Run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(run.output)}


def _same_losses(mine: Run, reference: Run, tolerance: float) -> None:
    theirs = _losses(reference)
    assert _losses(mine).keys() == theirs.keys()
    for step, loss in _losses(mine).items():
        assert loss == pytest.approx(theirs[step], abs=tolerance), step


def _load(run: Run) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert run.result is not None and run.result.uri
    output = Path(run.result.uri.removeprefix("local://"))
    return AutoModelForCausalLM.from_pretrained(output), AutoTokenizer.from_pretrained(output)


def _same_weights(mine: Run, reference: Run, tolerance: float) -> None:
    """Every tensor of the published model, at its full shape, equals the reference's."""
    import torch

    model, _ = _load(mine)
    theirs, _ = _load(reference)
    expected = theirs.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape, name
        assert torch.allclose(got[name], tensor, atol=tolerance, rtol=0), name


def test_zero2_on_two_ranks_trains_what_one_process_trains(
    runs: Runs, dataset: tuple[str, dict[str, Any]]
) -> None:
    run = runs.zero2
    assert run.returncode == 0, run.output
    result = run.result
    assert result is not None and result.error is None
    assert result.digest == artifact_digest(Path(result.uri or ""))
    assert result.metrics["tokens_per_second"] > 0
    assert result.progress is not None
    assert (result.progress.step, result.progress.total) == (40, 40)
    losses = _losses(run)
    assert losses[1] == pytest.approx(math.log(dataset[1]["vocabSize"]), abs=0.3)
    assert losses[10] > losses[20] > losses[40] and losses[40] < losses[1] - 2.0
    assert all("tokens_per_second" in r for r in train_records(run.output))
    _same_losses(run, runs.reference, 1e-4)
    _same_weights(run, runs.reference, 1e-4)
    checkpoint = Path(f"{result.uri}-checkpoints") / "step-00000040"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["tensors"] == {
        "format": "deepspeed",
        "zeroStage": 2,
        "precision": "fp32",
        "world": 2,
    }
    assert sorted(p.name for p in (checkpoint / "deepspeed").iterdir()) == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


def test_published_model_loads_in_transformers_and_knows_the_text(
    runs: Runs, dataset: tuple[str, dict[str, Any]]
) -> None:
    import torch

    model, tokenizer = _load(runs.zero2)
    assert type(model).__name__ == "LlamaForCausalLM"
    text = "The old man follows the long river in the park. A dog likes a warm bed at home."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < math.log(dataset[1]["vocabSize"]) - 2.0  # a random model: log(vocab)
    prompt = tokenizer("The cat sees", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt.input_ids.shape[1] + 4


def test_zero3_with_cpu_offload_publishes_the_full_weights(runs: Runs) -> None:
    """ZeRO-3 keeps half of every weight on each rank: the published model must hold
    all of it, i.e. exactly the weights one process trained."""
    run = runs.zero3_offload
    assert run.returncode == 0, run.output
    _same_losses(run, runs.reference, 1e-4)
    _same_weights(run, runs.reference, 1e-4)
    checkpoint = Path(f"{run.result.uri if run.result else ''}-checkpoints") / "step-00000040"
    names = sorted(p.name for p in (checkpoint / "deepspeed").iterdir())
    assert names == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


def test_killed_zero2_run_resumes_to_the_uninterrupted_runs_loss(runs: Runs) -> None:
    killed, uninterrupted = runs.killed, runs.zero2
    assert 10 <= killed.step < 40
    assert not killed.published
    assert killed.rerun.returncode == 0, killed.rerun.output
    assert f"resuming from step {killed.step} of 40" in killed.rerun.output
    mine, theirs = _losses(killed.rerun), _losses(uninterrupted)
    assert min(mine) == killed.step + 1
    for step, loss in mine.items():
        if step in theirs:
            assert loss == pytest.approx(theirs[step], abs=1e-6), step
    assert killed.rerun.result is not None and uninterrupted.result is not None
    final = killed.rerun.result.metrics["loss"]
    assert final == pytest.approx(uninterrupted.result.metrics["loss"], abs=1e-6)


def test_zero1_moe_in_bf16_on_object_storage_resumes_exactly(runs: Runs) -> None:
    first, rerun = runs.zero1.first, runs.zero1.rerun
    assert first.returncode == 0, first.output
    assert rerun.returncode == 0, rerun.output
    assert "resuming from step 10 of 20" in rerun.output
    records = train_records(first.output)
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert all(1.0 < r["aux_loss"] < 4 * 2 for r in records)
    mine, theirs = _losses(rerun), _losses(first)
    assert sorted(mine) == list(range(11, 21))
    for step, loss in mine.items():
        assert loss == pytest.approx(theirs[step], abs=1e-6), step
    model, _ = _load(rerun)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert str(model.dtype) == "torch.bfloat16"
    step = runs.zero1.checkpoints / "step-00000020"
    assert (step / "deepspeed" / "mp_rank_00_model_states.pt").is_file()


def test_a_deepspeed_checkpoint_is_not_resumed_by_another_strategy(
    runs: Runs, dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """DeepSpeed's files are its ZeRO partitions for one stage and world size; a run that
    would read them otherwise stops with exit 2 instead of retrying forever."""
    assert runs.zero2.result is not None
    shutil.copytree(f"{runs.zero2.result.uri}-checkpoints", tmp_path / "model-checkpoints")
    config = pretrain_config(dataset[0], str(tmp_path / "model"), **ZERO1)
    run = run_component("pretrain", config, tmp_path / "run")
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "CheckpointMismatch"
    assert "'zeroStage': 2" in run.result.error.message
    assert not (tmp_path / "model").exists()
