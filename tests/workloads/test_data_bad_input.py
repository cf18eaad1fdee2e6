"""Bad input ends `modelsmith-runtime data` with exit code 2, a reason, and no artifact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import ExitCode
from modelsmith_runtime.storage import publish

from .conftest import run_component, task_config
from .corpus import generate, write_jsonl

Setup = Callable[[Path, Path], "dict[str, Any] | str"]
"""(workdir, output) -> the task config to run."""


def _spec(output: Path, source: Path, **extra: Any) -> dict[str, Any]:
    return {
        "output": {"uri": str(output)},
        "sources": [{"uri": str(source), "format": "jsonl"}],
        "tokenizer": {"train": {"vocabSize": 300}},
        "packing": {"sequenceLength": 32},
        **extra,
    }


def _good_source(workdir: Path) -> Path:
    corpus = generate(originals=20, exact=0, near=0, related=0, junk_each=0, seed=3)
    return write_jsonl(corpus.texts, workdir / "raw" / "good.jsonl")


def corrupt_jsonl(workdir: Path, output: Path) -> dict[str, Any]:
    source = workdir / "raw" / "bad.jsonl"
    source.parent.mkdir(parents=True)
    source.write_text("\n".join(['{"text": "fine, but alone"}'] + ["{not json"] * 9) + "\n")
    return task_config("DataPipeline", _spec(output, source.parent), str(output))


def unreadable_parquet(workdir: Path, output: Path) -> dict[str, Any]:
    source = workdir / "raw" / "broken.parquet"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"PAR1 this is not a parquet file")
    spec = _spec(output, source, sources=[{"uri": str(source), "format": "parquet"}])
    return task_config("DataPipeline", spec, str(output))


def all_filtered(workdir: Path, output: Path) -> dict[str, Any]:
    source = _good_source(workdir)
    spec = _spec(output, source, filters={"length": {"minChars": 100_000}})
    return task_config("DataPipeline", spec, str(output))


def no_files(workdir: Path, output: Path) -> dict[str, Any]:
    (workdir / "raw").mkdir()
    (workdir / "raw" / ".hidden").write_text("{}")
    return task_config("DataPipeline", _spec(output, workdir / "raw"), str(output))


def missing_source(workdir: Path, output: Path) -> dict[str, Any]:
    return task_config("DataPipeline", _spec(output, workdir / "nowhere"), str(output))


def half_written_tokenizer(workdir: Path, output: Path) -> dict[str, Any]:
    tokenizer = workdir / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")  # no completion marker
    spec = _spec(output, _good_source(workdir), tokenizer={"existing": {"uri": str(tokenizer)}})
    return task_config("DataPipeline", spec, str(output), tokenizer=str(tokenizer))


def tokenizer_without_tokenizer_json(workdir: Path, output: Path) -> dict[str, Any]:
    tokenizer = workdir / "tokenizer"
    with publish(str(tokenizer)) as (staging, _):
        (staging / "vocab.txt").write_text("a\nb\n")
    spec = _spec(output, _good_source(workdir), tokenizer={"existing": {"uri": str(tokenizer)}})
    return task_config("DataPipeline", spec, str(output), tokenizer=str(tokenizer))


def invalid_spec(workdir: Path, output: Path) -> dict[str, Any]:
    spec = _spec(output, _good_source(workdir), dedup={"threshold": 2})
    return task_config("DataPipeline", spec, str(output))


def not_a_task_config(workdir: Path, output: Path) -> str:
    return json.dumps({"kind": "DataPipeline", "output": str(output)})


def method_not_in_the_schema(workdir: Path, output: Path) -> dict[str, Any]:
    """A method the schema does not list is refused by name, with the ones it does."""
    spec = _spec(output, _good_source(workdir), dedup={"near": "lsh"})
    return task_config("DataPipeline", spec, str(output))


CASES: list[tuple[Setup, str, str]] = [
    (corrupt_jsonl, "CorruptInput", "bad.jsonl:2"),
    (unreadable_parquet, "UnreadableInput", "broken.parquet"),
    (all_filtered, "EmptyCorpus", "length_too_short: 20"),
    (no_files, "EmptyCorpus", "holds no files"),
    (missing_source, "MissingInput", "does not exist"),
    (half_written_tokenizer, "IncompleteArtifact", "half-written"),
    (tokenizer_without_tokenizer_json, "InvalidTokenizer", "no tokenizer.json"),
    (invalid_spec, "InvalidSpec", "threshold"),
    (not_a_task_config, "InvalidTaskConfig", "spec"),
    (
        method_not_in_the_schema,
        "InvalidSpec",
        "dedup.near\n  Input should be 'minhash', 'simhash' or 'none'",
    ),
]


@pytest.mark.parametrize(("setup", "reason", "mentions"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_fails_at_once_and_publishes_nothing(
    setup: Setup, reason: str, mentions: str, workdir: Path
) -> None:
    output = workdir / "out" / "dataset"
    run = run_component("data", setup(workdir, output), workdir / "run")
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == reason, run.result.error
    assert mentions in run.result.error.message
    assert run.result.uri is None
    assert not output.exists()
    assert not output.parent.exists() or not list(output.parent.iterdir())
