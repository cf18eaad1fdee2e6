"""How `modelsmith-runtime pretrain` fails: the reason, the exit code the Job acts on,
and never a published model."""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import ExitCode, Result, parse_result
from tests.workloads.conftest import Run, run_component
from tests.workloads.tiny_dataset import (
    evicted_pretrain,
    pretrain_config,
    publish_dataset,
    train_records,
    write_dataset,
)

CLI = [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("data") / "dataset")
    publish_dataset(uri)
    return uri


def _fails(config: dict[str, Any] | str, workdir: Path, code: ExitCode, reason: str) -> str:
    run = run_component("pretrain", config, workdir)
    assert run.returncode == code, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == reason, run.result.error
    assert run.result.uri is None
    assert not (workdir / "model").exists()
    return run.result.error.message


def test_missing_dataset(tmp_path: Path) -> None:
    config = pretrain_config(str(tmp_path / "nowhere"), str(tmp_path / "model"))
    message = _fails(config, tmp_path, ExitCode.BAD_INPUT, "MissingArtifact")
    assert "nowhere" in message


def test_half_written_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path / "partial")  # everything but the completion marker
    config = pretrain_config(str(tmp_path / "partial"), str(tmp_path / "model"))
    message = _fails(config, tmp_path, ExitCode.BAD_INPUT, "IncompleteArtifact")
    assert "half-written" in message


def test_dataset_without_tokenizer(tmp_path: Path) -> None:
    import shutil

    from modelsmith_runtime import storage

    with storage.publish(str(tmp_path / "data")) as (staging, _):
        write_dataset(staging)
        shutil.rmtree(staging / "tokenizer")
    config = pretrain_config(str(tmp_path / "data"), str(tmp_path / "model"))
    _fails(config, tmp_path, ExitCode.BAD_INPUT, "MissingTokenizer")


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"architecture": {"layers": 2, "hiddenSize": 10, "heads": 4}}, "InvalidSpec", "hidden"),
        ({"training": {"globalBatchSize": 8, "microBatchSize": 4, "learningRate": 0.1,
                       "steps": 5, "tokens": 100}}, "InvalidSpec", "exactly one of steps"),
        ({"training": {"globalBatchSize": 6, "microBatchSize": 4, "learningRate": 0.1,
                       "steps": 5}}, "InvalidSpec", "multiple of"),
        ({"distribution": {"strategy": "ddp", "offload": "cpu"}}, "InvalidSpec",
         "fsdp or deepspeed"),
        ({"distribution": {"strategy": "fsdp", "zeroStage": 2}}, "InvalidSpec", "zeroStage"),
        ({"distribution": {"strategy": "ddp", "launcher": "ray"}, "resources": {"gpus": 3}},
         "InvalidSpec", "nodes * resources.gpus"),  # Ray's 3 workers: refused at parse
        ({"freeze": {"layers": 1}}, "InvalidSpec", "freeze needs initFrom"),
        ({"architecture": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 256}},
         "InvalidSpec", "vocabSize"),
    ],
)  # fmt: skip
def test_spec_the_trainer_rejects(
    change: dict[str, Any], reason: str, words: str, dataset: str, tmp_path: Path
) -> None:
    config = pretrain_config(dataset, str(tmp_path / "model"))
    config["spec"].update(change)
    assert words in _fails(config, tmp_path, ExitCode.BAD_INPUT, reason)


def test_task_config_that_is_not_json(tmp_path: Path) -> None:
    _fails("{not json", tmp_path, ExitCode.BAD_INPUT, "InvalidTaskConfig")


def _diverging(dataset: str, workdir: Path) -> Run:
    """fp16 activations overflow at learning rate 1 without clipping: a real NaN loss."""
    training = {"learningRate": 1.0, "warmupRatio": 0, "gradClip": 0, "weightDecay": 0}
    config = pretrain_config(dataset, str(workdir / "model"), training=training, precision="fp16")
    return run_component("pretrain", config, workdir)


@dataclass(frozen=True)
class Terminated:
    returncode: int
    result: Result | None
    checkpoints: Path


def _terminated(dataset: str, workdir: Path) -> Terminated:
    """SIGTERM a long run after its third step."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = pretrain_config(
        dataset, str(workdir / "model"), training={"steps": 1000}, checkpoint={"intervalSteps": 500}
    )
    returncode, message, _log = evicted_pretrain(config, workdir, {"OMP_NUM_THREADS": "1"})
    return Terminated(returncode, parse_result(message), workdir / "model-checkpoints")


@pytest.fixture(scope="module")
def heavy(dataset: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Terminated]:
    """The two failures that need a training process, run side by side (one core each)."""
    root = tmp_path_factory.mktemp("heavy")
    with ThreadPoolExecutor(max_workers=2) as pool:
        diverging = pool.submit(_diverging, dataset, root / "nan")
        terminated = pool.submit(_terminated, dataset, root / "sigterm")
        return diverging.result(), terminated.result()


def test_divergence_stops_the_run_as_non_retryable(heavy: tuple[Run, Terminated]) -> None:
    run, workdir = heavy[0], heavy[1].checkpoints.parent.parent / "nan"
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "NaNLoss"
    assert "diverged" in run.result.error.message
    assert "learningRate" in run.result.error.message
    assert run.result.uri is None
    records = train_records(run.output)
    assert records and all(math.isfinite(r["loss"]) for r in records)  # stopped at the NaN
    assert not (workdir / "model").exists()


def test_sigterm_saves_a_checkpoint_and_reports_it(heavy: tuple[Run, Terminated]) -> None:
    """Eviction or `suspend`: the pod gets SIGTERM, saves where it is, exits 1 (retry)
    and tells the operator which checkpoint the retry will resume from."""
    done = heavy[1]
    assert done.returncode == ExitCode.TRANSIENT
    result = done.result
    assert result is not None and result.error is not None
    assert result.error.reason == "Interrupted"
    assert result.checkpoint is not None and result.progress is not None
    step = result.checkpoint.step
    assert step is not None and 3 <= step < 1000
    assert (result.progress.step, result.progress.total) == (step, 1000)
    assert result.checkpoint.uri == f"{done.checkpoints}/step-{step:08d}"
    assert (done.checkpoints / "latest").read_text() == f"step-{step:08d}"
    assert not (done.checkpoints.parent / "model").exists()
