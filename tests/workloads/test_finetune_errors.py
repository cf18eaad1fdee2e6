"""How `modelsmith-runtime finetune` fails: reason, exit code, and nothing published.

All but one of these fail before torch is imported (about a second each): that is the
point of checking the spec, the base model and every dataset line first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import COMPLETION_MARKER, ExitCode
from tests.workloads.conftest import run_component
from tests.workloads.tiny_model import (
    LORA,
    finetune_config,
    instruction_records,
    tiny_model,
    write_jsonl,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory)


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return str(write_jsonl(tmp_path / "train.jsonl", instruction_records(16)))


def _fails(config: dict[str, Any], workdir: Path, code: ExitCode, reason: str) -> str:
    run = run_component("finetune", config, workdir)
    assert run.returncode == code, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == reason, run.result.error
    assert run.result.uri is None
    assert not Path(config["output"]).exists()
    assert not list(Path(config["output"]).parent.glob(".staging-*"))
    return run.result.error.message


def test_qlora_on_a_node_without_the_gpu_it_asked_for_is_retried(
    base: str, dataset: str, tmp_path: Path
) -> None:
    config = finetune_config(
        base, dataset, str(tmp_path / "out"), method="qlora", lora=LORA, resources={"gpus": 1}
    )
    message = _fails(config, tmp_path, ExitCode.TRANSIENT, "GPUUnavailable")
    assert "resources.gpus: 1" in message and "retry" in message


def test_corrupt_lines_are_reported_by_file_and_line(base: str, tmp_path: Path) -> None:
    lines = [
        '{"instruction": "a", "output": "b"}',
        '{"instruction": "c", "output": "d"}',
        '{"instruction": "e", "output": ',
        '{"instruction": "f", "output": "g"}',
        '{"instruction": "h"}',
        '["not", "an", "object"]',
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = _fails(
        finetune_config(base, str(path), str(tmp_path / "out")),
        tmp_path,
        ExitCode.BAD_INPUT,
        "CorruptInput",
    )
    assert "3 invalid instruction record(s)" in message
    assert f"{path}:3: not JSON" in message
    assert f"{path}:5: 'output' must be a string" in message
    assert f"{path}:6: not a JSON object" in message


def test_chat_records_without_an_assistant_turn(base: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    config = finetune_config(base, str(path), str(tmp_path / "out"), format="chat")
    message = _fails(config, tmp_path, ExitCode.BAD_INPUT, "CorruptInput")
    assert f"{path}:1: no assistant message" in message


def test_empty_dataset(base: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    config = finetune_config(base, str(path), str(tmp_path / "out"))
    assert "no examples" in _fails(config, tmp_path, ExitCode.BAD_INPUT, "EmptyDataset")


def test_missing_base_model(dataset: str, tmp_path: Path) -> None:
    config = finetune_config(str(tmp_path / "nowhere"), dataset, str(tmp_path / "out"))
    message = _fails(config, tmp_path, ExitCode.BAD_INPUT, "MissingArtifact")
    assert "nowhere" in message


def test_half_written_base_model(base: str, dataset: str, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(base, partial, ignore=shutil.ignore_patterns(COMPLETION_MARKER))
    config = finetune_config(str(partial), dataset, str(tmp_path / "out"))
    assert "half-written" in _fails(config, tmp_path, ExitCode.BAD_INPUT, "IncompleteArtifact")


def test_half_written_dataset_directory(base: str, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "part-0.jsonl", instruction_records(8))
    config = finetune_config(base, str(tmp_path / "data"), str(tmp_path / "out"))
    _fails(config, tmp_path, ExitCode.BAD_INPUT, "IncompleteArtifact")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"method": "full", "lora": LORA}, "lora settings need method lora"),
        ({"method": "full", "mergeAdapter": True}, "mergeAdapter needs method lora"),
    ],
)
def test_rules_the_crd_states_are_checked_again(
    base: str, dataset: str, tmp_path: Path, spec: dict[str, Any], words: str
) -> None:
    config = finetune_config(base, dataset, str(tmp_path / "out"), **spec)
    assert words in _fails(config, tmp_path, ExitCode.BAD_INPUT, "InvalidSpec")
