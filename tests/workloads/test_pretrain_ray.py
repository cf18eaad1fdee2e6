"""`distribution.launcher: ray` as real processes: Ray Train runs the torchrun ranks' code.

Outside a pod `modelsmith-runtime pretrain` starts a local Ray instance (this machine's
cores) and two Ray Train workers on it. A 2-rank torchrun run on the same data and seed
is the reference: if Ray ran anything but the same per-rank training, the losses and
the published weights would differ. A worker killed after a checkpoint must end the
attempt as retryable with that checkpoint, and the retry must land on the same loss.

Starting Ray and two workers that import torch takes most of a minute on two cores,
so the runs are started once per module, two at a time, and the tests read what each
produced. Each run gets a Ray temp directory of its own (RAY_TMPDIR): `ray.init()`
would otherwise join a cluster that `ray start` left on this machine.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from modelsmith.contract import COMPLETION_MARKER, ExitCode, Result, parse_result
from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.storage import artifact_digest
from modelsmith_runtime.train.raytrain import RankError, failure
from tests.workloads.conftest import Run, pod_env, run_component
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset, train_records

CLI = [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain"]
RAY_TWO_WORKERS = {
    "distribution": {"strategy": "ddp", "launcher": "ray"},
    "resources": {"gpus": 2},
}
TORCHRUN_TWO_RANKS = {"distribution": {"strategy": "ddp"}, "resources": {"gpus": 2}}
RAY_TWO_NODES = {
    "distribution": {"strategy": "ddp", "nodes": 2, "launcher": "ray"},
    "resources": {"gpus": 1},
}


@dataclass(frozen=True)
class Killed:
    returncode: int
    result: Result | None
    latest: int
    """The newest committed checkpoint once the attempt had ended."""
    output: str


@dataclass(frozen=True)
class Runs:
    ray: Run
    torchrun: Run
    diverging: Run
    killed: Killed
    resumed: Run
    root: Path


@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    """Short (Unix socket paths are limited to 107 bytes) and private; afterwards no
    Ray process of ours may be left."""
    root = Path(tempfile.mkdtemp(prefix="msr", dir="/tmp"))
    try:
        yield root
    finally:
        left = _ray_processes(root)
        for proc in left:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, [p.info["cmdline"] for p in left]


def _ray_processes(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(root) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return "RayTrainWorker" in " ".join(proc.cmdline())
    except psutil.Error:  # gone meanwhile
        return False


def _ray_env(ray_tmp: Path, name: str) -> dict[str, str]:
    folder = ray_tmp / name
    folder.mkdir()
    return {"RAY_TMPDIR": str(folder)}


def _kill_a_worker_after_first_checkpoint(
    config: dict[str, Any], workdir: Path, env: dict[str, str]
) -> Killed:
    """Start a run, SIGKILL one Ray Train worker once a checkpoint is committed, as
    the OOM killer or a lost node would; the driver must notice and end the attempt."""
    checkpoints = Path(f"{config['output']}-checkpoints")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "task.json").write_text(json.dumps(config))
    log = workdir / "killed-termination-log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    full_env["MODELSMITH_TERMINATION_LOG"] = str(log)
    with (workdir / "killed.log").open("w") as out:
        proc = subprocess.Popen(
            [*CLI, f"--task-config={workdir / 'task.json'}"],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 400
        while not (checkpoints / "latest").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("no checkpoint within 400 s")
            time.sleep(0.005)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if _is_worker(p)]
        if proc.poll() is not None or len(workers) != 2:
            proc.kill()
            pytest.fail(f"the run ended ({proc.returncode}) or has {len(workers)} workers")
        workers[-1].send_signal(signal.SIGKILL)
        returncode = proc.wait(timeout=300)
    message = log.read_text() if log.exists() else None
    latest = int((checkpoints / "latest").read_text().removeprefix("step-"))
    return Killed(returncode, parse_result(message), latest, (workdir / "killed.log").read_text())


def _diverging(dataset: str, workdir: Path, env: dict[str, str]) -> Run:
    """fp16 activations overflow at learning rate 1 without clipping: a real NaN loss,
    on both ranks at once (they agree on the loss before anyone steps)."""
    training = {"learningRate": 1.0, "warmupRatio": 0, "gradClip": 0, "weightDecay": 0}
    config = pretrain_config(
        dataset,
        str(workdir / "model"),
        training=training,
        precision="fp16",
        **RAY_TWO_WORKERS,
    )
    return run_component("pretrain", config, workdir, env=env)


def _kill_and_resume(dataset: str, workdir: Path, env: dict[str, str]) -> tuple[Killed, Run]:
    config = pretrain_config(dataset, str(workdir / "model"), **RAY_TWO_NODES)
    killed = _kill_a_worker_after_first_checkpoint(config, workdir, env)
    return killed, run_component("pretrain", config, workdir, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_tmp: Path) -> Runs:
    root = tmp_path_factory.mktemp("ray")
    dataset = str(root / "dataset")
    publish_dataset(dataset)
    ray_config = pretrain_config(dataset, str(root / "ray" / "model"), **RAY_TWO_WORKERS)
    torchrun_config = pretrain_config(
        dataset, str(root / "torchrun" / "model"), **TORCHRUN_TWO_RANKS
    )

    def first_lane() -> tuple[Run, Run, Run]:
        ray = run_component("pretrain", ray_config, root / "ray", env=_ray_env(ray_tmp, "a"))
        torchrun = run_component("pretrain", torchrun_config, root / "torchrun", env=pod_env(2))
        return ray, torchrun, _diverging(dataset, root / "nan", _ray_env(ray_tmp, "b"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(first_lane)
        second = pool.submit(_kill_and_resume, dataset, root / "resume", _ray_env(ray_tmp, "c"))
        (ray, torchrun, diverging), (killed, resumed) = first.result(), second.result()
    return Runs(ray, torchrun, diverging, killed, resumed, root)


def _losses(run: Run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(run.output)}


def test_ray_run_trains_publishes_and_logs_json(runs: Runs) -> None:
    run = runs.ray
    assert run.returncode == 0, run.output
    assert "Ray Train: 2 workers" in run.output
    result = run.result
    assert result is not None and result.error is None
    output = runs.root / "ray" / "model"
    assert result.uri == str(output) and result.digest == artifact_digest(output)
    assert result.progress is not None and (result.progress.step, result.progress.total) == (40, 40)
    assert result.metrics["tokens_per_second"] > 0
    assert result.metrics["tokens"] == 40 * 8 * 64
    losses = _losses(run)
    assert sorted(losses) == [1, 10, 20, 30, 40]
    assert losses[10] > losses[20] > losses[40] == result.metrics["loss"]
    assert result.metrics["loss"] < losses[1] - 2.0
    # The workers' lines reach the driver's output whole: one JSON object each, from rank 0.
    train_lines = [line for line in run.output.splitlines() if '\\"event\\": \\"train\\"' in line]
    assert len(train_lines) == 5
    assert all(json.loads(line)["rank"] == "0" for line in train_lines)
    assert "Failed to query Ray Train Controller" not in run.output  # no cleaner, no noise


def test_ray_output_is_what_torchrun_publishes_and_nothing_of_rays(runs: Runs) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ray, torchrun = runs.root / "ray", runs.root / "torchrun"
    assert runs.torchrun.returncode == 0, runs.torchrun.output
    assert sorted(p.name for p in (ray / "model").iterdir()) == sorted(
        p.name for p in (torchrun / "model").iterdir()
    )
    assert (ray / "model" / COMPLETION_MARKER).is_file()
    assert sorted(p.name for p in ray.iterdir()) == sorted(p.name for p in torchrun.iterdir())
    assert sorted(p.name for p in (ray / "model-checkpoints").iterdir()) == [
        "latest",
        "step-00000030",
        "step-00000040",
    ]
    tokenizer = AutoTokenizer.from_pretrained(ray / "model")
    model = AutoModelForCausalLM.from_pretrained(ray / "model")
    ids = tokenizer("The cat sees the red ball in the park.", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < math.log(len(tokenizer)) - 2.0


def test_ray_and_torchrun_run_the_same_training(runs: Runs) -> None:
    """Same ranks, same process-group backend (gloo), same code: same numbers."""
    mine, theirs = _losses(runs.ray), _losses(runs.torchrun)
    assert mine.keys() == theirs.keys()
    for step, loss in theirs.items():
        assert mine[step] == pytest.approx(loss, abs=1e-6), step
    assert runs.ray.result is not None and runs.torchrun.result is not None
    assert runs.ray.result.digest == runs.torchrun.result.digest  # bit-identical weights


def test_bad_input_on_a_ray_worker_exits_2_and_publishes_nothing(runs: Runs) -> None:
    run = runs.diverging
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "NaNLoss"
    assert "diverged" in run.result.error.message
    assert run.result.uri is None
    records = train_records(run.output)
    assert records and all(math.isfinite(r["loss"]) for r in records)
    assert not (runs.root / "nan" / "model").exists()


def test_killed_ray_worker_is_retryable_and_the_retry_resumes_to_the_same_loss(
    runs: Runs,
) -> None:
    killed, resumed = runs.killed, runs.resumed
    assert killed.returncode == ExitCode.TRANSIENT, killed.output
    result = killed.result
    assert result is not None and result.error is not None, killed.output
    assert result.error.reason == "RayWorkerFailed"
    assert result.checkpoint is not None and result.progress is not None
    assert 10 <= killed.latest < 40
    assert result.checkpoint.step == killed.latest
    assert result.checkpoint.uri == f"{runs.root}/resume/model-checkpoints/step-{killed.latest:08d}"
    assert result.progress.total == 40 and (result.progress.step or 0) >= killed.latest

    assert resumed.returncode == 0, resumed.output
    assert f"resuming from step {killed.latest} of 40" in resumed.output
    assert resumed.result is not None and runs.ray.result is not None
    assert resumed.result.metrics["loss"] == pytest.approx(
        runs.ray.result.metrics["loss"], abs=1e-6
    )
    mine, theirs = _losses(resumed), _losses(runs.ray)
    assert min(mine) == killed.latest + 1
    for step, loss in mine.items():
        if step in theirs:
            assert loss == pytest.approx(theirs[step], abs=1e-6), step


def _plan_with_checkpoint(root: Path, step: int | None) -> Any:
    """What `failure` reads of a plan: the checkpoint store, with a commit at ``step``."""
    if step is not None:
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / "trainer_state.json").write_text("{}")
        (root / "latest").write_text(f"step-{step:08d}")
    spec = SimpleNamespace(checkpoint=SimpleNamespace(keep_last=3))
    return SimpleNamespace(checkpoints=str(root), spec=spec, total_steps=40)


def test_the_first_rank_failure_is_the_cause_and_bad_input_wins(tmp_path: Path) -> None:
    """In process, on Ray's own error type after a pickling round trip (how it reaches
    the driver): the cases a 2-worker run cannot provoke on demand."""
    from ray.train import WorkerGroupError

    partial = Result(progress={"step": 12, "total": 40}, checkpoint={"uri": "/c", "step": 10})
    echo = RankError(TransientError("TrainingFailed", "gloo: peer gone", partial), at=2.0)
    cause = RankError(TransientError("OutOfMemory", "CUDA out of memory"), at=1.0)
    bad = RankError(BadInputError("NaNLoss", "diverged"), at=3.0)
    error = pickle.loads(pickle.dumps(WorkerGroupError("x", {0: echo, 1: cause})))  # noqa: S301
    plan = _plan_with_checkpoint(tmp_path / "none", None)  # a rank said where the run was
    transient = failure(error, plan)
    assert isinstance(transient, TransientError)
    assert (transient.reason, transient.message) == ("OutOfMemory", "CUDA out of memory")
    assert transient.partial == partial
    verdict = failure(WorkerGroupError("x", {0: echo, 1: bad}), plan)
    assert isinstance(verdict, BadInputError)
    assert (verdict.reason, verdict.message) == ("NaNLoss", "diverged")
    lost = failure(WorkerGroupError("x", {0: echo, 1: RuntimeError("segfault")}), plan)
    assert isinstance(lost, TransientError) and lost.reason == "RayWorkerFailed"
    assert lost.message == "Ray Train worker 1: RuntimeError: segfault"
    assert lost.partial == partial


def test_a_checkpoint_committed_after_the_ranks_last_word_is_still_resumed_from(
    tmp_path: Path,
) -> None:
    """A rank killed between committing step 20 and noting it reports step 10: the
    store's commit pointer is the truth the retry resumes from."""
    from ray.train import WorkerGroupError

    partial = Result(progress={"step": 21, "total": 40}, checkpoint={"uri": "/c", "step": 10})
    echo = RankError(TransientError("TrainingFailed", "gloo: peer gone", partial), at=2.0)
    plan = _plan_with_checkpoint(tmp_path / "ckpt", 20)
    lost = failure(WorkerGroupError("x", {0: echo, 1: RuntimeError("killed")}), plan)
    assert isinstance(lost, TransientError) and lost.partial is not None
    assert lost.partial.checkpoint is not None and lost.partial.checkpoint.step == 20
    assert lost.partial.progress == partial.progress
