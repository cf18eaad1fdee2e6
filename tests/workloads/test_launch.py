"""The in-pod torchrun launcher: one exit code and one result out of many ranks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from modelsmith.contract import ErrorInfo, ExitCode, Result
from modelsmith_runtime.launch import fold, should_launch
from tests.workloads.conftest import pod_env, run_component
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset


def _rank(folder: Path, rank: int, code: int, result: Result, when: float) -> None:
    (folder / f"rank-{rank}.json").write_text(result.render())
    exit_file = folder / f"rank-{rank}.exit"
    exit_file.write_text(str(code))
    os.utime(exit_file, (when, when))


def test_bad_input_on_any_rank_is_not_retried_and_the_first_failure_speaks(
    tmp_path: Path,
) -> None:
    now = time.time()
    _rank(tmp_path, 0, 1, Result(error=ErrorInfo(reason="RendezvousClosed", message="b")), now)
    _rank(tmp_path, 1, 2, Result(error=ErrorInfo(reason="NaNLoss", message="a")), now - 5)
    code, result = fold(tmp_path, torchrun_code=1)
    assert code == ExitCode.BAD_INPUT
    assert result.error is not None and result.error.reason == "NaNLoss"


def test_success_is_rank_zeros_result_and_silence_is_a_failure(tmp_path: Path) -> None:
    _rank(tmp_path, 1, 0, Result(uri="/wrong"), time.time())
    _rank(tmp_path, 0, 0, Result(uri="/model", digest="sha256:1"), time.time())
    assert fold(tmp_path, 0) == (0, Result(uri="/model", digest="sha256:1"))
    code, result = fold(tmp_path / "nothing-here", 0)
    assert code == ExitCode.TRANSIENT and result.error is not None


@pytest.mark.parametrize(
    ("env", "launch"),
    [
        ({"NNODES": "2", "NPROC_PER_NODE": "1"}, True),
        ({"NNODES": "1", "NPROC_PER_NODE": "8"}, True),
        ({"NNODES": "1", "NPROC_PER_NODE": "1"}, False),
        ({"NNODES": "1", "NPROC_PER_NODE": "8", "RANK": "3"}, False),
        ({}, False),
    ],
)
def test_torchrun_is_started_once_and_only_for_more_than_one_rank(
    env: dict[str, str], launch: bool
) -> None:
    assert should_launch(env) == launch


def test_bad_input_under_torchrun_still_exits_2(tmp_path: Path) -> None:
    dataset = tmp_path / "data"
    publish_dataset(str(dataset))
    config = pretrain_config(
        str(dataset),
        str(tmp_path / "model"),
        architecture={"vocabSize": 256},  # below the dataset's: refused by the plan
        distribution={"strategy": "fsdp"},
        resources={"gpus": 2},
    )
    run = run_component("pretrain", config, tmp_path / "run", env=pod_env(2))
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "InvalidSpec"
    assert "vocabSize" in run.result.error.message
    assert not (tmp_path / "model").exists()
