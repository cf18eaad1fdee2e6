"""How `modelsmith-runtime quantize` fails: reason, exit code, and nothing published.

Every case here is decided before torch is imported, in about a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import COMPLETION_MARKER, ExitCode
from modelsmith_runtime import storage
from tests.workloads.conftest import run_component
from tests.workloads.tiny_model import quantize_config, tiny_model, write_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory)


def _fails(config: dict[str, Any], workdir: Path, reason: str) -> str:
    run = run_component("quantize", config, workdir)
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == reason, run.result.error
    assert run.result.uri is None
    assert not Path(config["output"]).exists()
    return run.result.error.message


def test_fp8_on_a_cpu_spec_is_refused_with_the_reason(base: str, tmp_path: Path) -> None:
    """The API model's rule, as the runtime parses the spec: the API server's words."""
    message = _fails(quantize_config(base, str(tmp_path / "out"), "fp8"), tmp_path, "InvalidSpec")
    assert "compute capability 8.9" in message and "resources.gpus of 1 or more" in message
    assert "int8-weight-only" in message


def test_missing_model(tmp_path: Path) -> None:
    config = quantize_config(str(tmp_path / "nowhere"), str(tmp_path / "out"), "int8-weight-only")
    assert "nowhere" in _fails(config, tmp_path, "MissingArtifact")


def test_half_written_model(base: str, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(base, partial, ignore=shutil.ignore_patterns(COMPLETION_MARKER))
    config = quantize_config(str(partial), str(tmp_path / "out"), "int8-weight-only")
    assert "half-written" in _fails(config, tmp_path, "IncompleteArtifact")


def test_an_unmerged_adapter_is_not_a_model(tmp_path: Path) -> None:
    with storage.publish(str(tmp_path / "adapter")) as (staging, _):
        (staging / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    config = quantize_config(str(tmp_path / "adapter"), str(tmp_path / "out"), "dynamic-int8")
    assert "mergeAdapter: true" in _fails(config, tmp_path, "InvalidModel")


@pytest.mark.parametrize(
    ("marker", "content", "named"),
    [
        ("adapter_config.json", {"peft_type": "PREFIX_TUNING"}, "PREFIX_TUNING adapter"),
        ("bottleneck_adapter.json", {"bottleneckSize": 4}, "bottleneck adapter"),
    ],
)
def test_an_adapter_that_cannot_merge_says_which_fine_tune_gives_a_model(
    tmp_path: Path, marker: str, content: dict[str, Any], named: str
) -> None:
    with storage.publish(str(tmp_path / "adapter")) as (staging, _):
        (staging / marker).write_text(json.dumps(content))
    config = quantize_config(str(tmp_path / "adapter"), str(tmp_path / "out"), "dynamic-int8")
    message = _fails(config, tmp_path / "work", "InvalidModel")
    assert named in message and "cannot be merged" in message, message
    assert "method full, distill, or lora with mergeAdapter: true" in message, message


def test_gptq_without_calibration(base: str, tmp_path: Path) -> None:
    config = quantize_config(base, str(tmp_path / "out"), "gptq")
    assert "calibration" in _fails(config, tmp_path, "InvalidSpec")


def test_group_size_on_an_int8_method(base: str, tmp_path: Path) -> None:
    config = quantize_config(base, str(tmp_path / "out"), "int8-weight-only", groupSize=64)
    assert "groupSize applies to" in _fails(config, tmp_path, "InvalidSpec")


def test_corrupt_eval_line_is_reported_by_file_and_line(base: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "eval.jsonl", [{"text": "fine"}, {"title": "no text here"}])
    gate = {"evalDataset": {"uri": str(path)}}
    config = quantize_config(base, str(tmp_path / "out"), "int8-weight-only", qualityGate=gate)
    assert f"{path}:2: no text" in _fails(config, tmp_path, "CorruptInput")
