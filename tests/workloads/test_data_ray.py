"""``engine: ray`` as real processes: the same dataset as the indexed engine, the same
errors, and metrics and progress from both engines while they run.

The test process starts one local Ray instance and every ray run joins it through
RAY_ADDRESS, as a driver pod joins its own head, so Ray starts once for the module
(several seconds here). Its shutdown at the end stops only the processes it started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import COMPLETION_MARKER, ExitCode

from .conftest import run_component, task_config
from .corpus import JUNK, REASONS, Corpus, generate, kept_texts, write_jsonl
from .observe import Observed, run_observed
from .test_data_bad_input import corrupt_jsonl, unreadable_parquet
from .test_data_pipeline import spec_for

CORRUPT_LINES = 2


@dataclass(frozen=True)
class Engines:
    corpus: Corpus
    source: Path
    indexed: Observed
    ray: Observed
    outputs: dict[str, Path]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Engines:
    root = tmp_path_factory.mktemp("engines")
    corpus = generate()
    source = write_jsonl(corpus.texts, root / "raw" / "corpus.jsonl")
    lines = source.read_text().splitlines()
    for n in range(CORRUPT_LINES):
        lines.insert(70 * (n + 1), '{"text": "cut short')
    source.write_text("\n".join(lines) + "\n")
    observed: dict[str, Observed] = {}
    outputs: dict[str, Path] = {}
    for engine in ("indexed", "ray"):
        out = root / "out" / engine
        spec = spec_for(out, [{"uri": str(source.parent), "format": "jsonl"}], engine=engine)
        config = task_config("DataPipeline", spec, str(out))
        observed[engine] = run_observed("data", config, root / engine, {"RAY_ADDRESS": ray_address})
        outputs[engine] = out
        assert observed[engine].run.returncode == 0, observed[engine].run.output[-5000:]
    return Engines(corpus, source, observed["indexed"], observed["ray"], outputs)


def test_ray_publishes_the_indexed_engines_dataset_byte_for_byte(engines: Engines) -> None:
    indexed, ray = engines.outputs["indexed"], engines.outputs["ray"]
    files = sorted(p.relative_to(indexed) for p in indexed.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ray) for p in ray.rglob("*") if p.is_file()), (
        "the ray run published other files (Ray temp or spill files in the output?)"
    )
    for name in files:
        if name.name not in ("report.json", COMPLETION_MARKER):
            assert (indexed / name).read_bytes() == (ray / name).read_bytes(), name
    reports = [json.loads((out / "report.json").read_text()) for out in (indexed, ray)]
    assert [r.pop("engine") for r in reports] == ["indexed", "ray"]
    assert reports[0] == reports[1]
    assert reports[0]["documents"]["invalid"] == CORRUPT_LINES
    assert sorted(p.name for p in indexed.parent.iterdir()) == ["indexed", "ray"]

    metrics = [e.run.result.metrics for e in (engines.indexed, engines.ray) if e.run.result]
    assert len(metrics) == 2 and metrics[0] == metrics[1]
    assert engines.ray.run.result is not None
    assert engines.ray.run.result.uri == str(ray)


def test_ray_removes_the_planted_duplicates_as_the_indexed_engine_does(engines: Engines) -> None:
    corpus = engines.corpus
    candidates = set(corpus.units()) | {d.canonical for d in corpus.docs}
    kept = {engine: kept_texts(out, candidates) for engine, out in engines.outputs.items()}
    assert kept["ray"] == kept["indexed"] == corpus.expected_kept()
    precision, recall = corpus.scores(kept["ray"])
    assert (precision, recall) == corpus.scores(kept["indexed"])
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


@pytest.mark.parametrize("engine", ["indexed", "ray"])
def test_metrics_endpoint_serves_the_runs_counts(engines: Engines, engine: str) -> None:
    observed: Observed = getattr(engines, engine)
    assert observed.run.result is not None
    result = observed.run.result.metrics
    report = json.loads((engines.outputs[engine] / "report.json").read_text())
    served = observed.metrics()
    assert served["modelsmith_data_documents_read_total"] == result["documents_in"]
    assert served["modelsmith_data_bytes_read_total"] == result["bytes_in"]
    removed = "modelsmith_data_documents_removed_total{{reason={}}}"
    assert served[removed.format("invalid")] == CORRUPT_LINES
    assert served[removed.format("exact_duplicate")] == result["exact_duplicates"]
    assert served[removed.format("near_duplicate")] == result["near_duplicates"]
    for kind in JUNK:
        assert served[removed.format(REASONS[kind])] == engines.corpus.counts[kind], kind
    size = "modelsmith_data_bytes_removed_total{{reason={}}}"
    assert served[size.format("near_duplicate")] == result["removed_near_duplicate_bytes"]
    assert served["modelsmith_data_documents_kept"] == result["documents_out"]
    assert served["modelsmith_data_tokens_total"] == report["tokens"]
    file_size = engines.source.stat().st_size
    assert served["modelsmith_data_input_bytes"] == file_size
    assert served["modelsmith_data_input_bytes_scanned"] == file_size


def test_metrics_are_served_while_ray_maps_the_corpus(engines: Engines) -> None:
    """The Ray job takes seconds, so scrapes land before the dedup has kept anything."""
    before_dedup = [
        m
        for m in (engines.ray.metrics(i) for i in range(len(engines.ray.scrapes)))
        if m["modelsmith_data_documents_kept"] == 0
    ]
    assert before_dedup, "no scrape answered before the run ended"
    assert all(m["modelsmith_data_tokens_total"] == 0 for m in before_dedup)
    # A scrape may land before the sources are even listed (a loaded machine showed it):
    # the last one before dedup kept anything must know the input's size.
    assert before_dedup[-1]["modelsmith_data_input_bytes"] == engines.source.stat().st_size


@pytest.mark.parametrize("engine", ["indexed", "ray"])
def test_progress_reaches_the_status_endpoint_in_input_bytes(engines: Engines, engine: str) -> None:
    observed: Observed = getattr(engines, engine)
    assert observed.reports, "no progress report arrived"
    assert {auth for auth, _ in observed.reports} == {"Bearer data-pod-token"}
    total = engines.source.stat().st_size
    steps = [body["step"] for _, body in observed.reports]
    assert {body["total"] for _, body in observed.reports} == {total}
    assert steps == sorted(steps)
    assert observed.reports[0][1] == {"step": 0, "total": total}, "sent before any reading"
    assert observed.reports[-1][1] == {"step": total, "total": total}, "the end is always sent"


def blank_lines_only(workdir: Path, output: Path) -> dict[str, Any]:
    source = workdir / "raw" / "blank.jsonl"
    source.parent.mkdir(parents=True)
    source.write_text("\n  \n\n")
    spec = {
        "output": {"uri": str(output)},
        "sources": [{"uri": str(source), "format": "jsonl"}],
        "tokenizer": {"train": {"vocabSize": 300}},
    }
    return task_config("DataPipeline", spec, str(output))


BAD: list[tuple[Callable[[Path, Path], dict[str, Any]], str]] = [
    (corrupt_jsonl, "CorruptInput"),  # found by the driver, from every share's rows
    (unreadable_parquet, "UnreadableInput"),  # raised inside the Ray tasks
    (blank_lines_only, "EmptyCorpus"),  # found by the driver's reduce, after Ray
]


@pytest.mark.parametrize(("setup", "reason"), BAD, ids=[case[0].__name__ for case in BAD])
def test_bad_input_under_ray_fails_as_under_the_indexed_engine(
    setup: Callable[[Path, Path], dict[str, Any]], reason: str, workdir: Path, ray_address: str
) -> None:
    config = setup(workdir, workdir / "out" / "dataset")
    errors = {}
    for engine in ("indexed", "ray"):
        output = workdir / "out" / engine
        spec = {**config["spec"], "output": {"uri": str(output)}, "engine": engine}
        engine_config = {**config, "spec": spec, "output": str(output)}
        run = run_component(
            "data", engine_config, workdir / f"run-{engine}", env={"RAY_ADDRESS": ray_address}
        )
        assert run.returncode == ExitCode.BAD_INPUT, run.output[-5000:]
        assert run.result is not None and run.result.error is not None
        assert run.result.uri is None
        assert not output.exists()
        errors[engine] = run.result.error
    assert errors["ray"].reason == errors["indexed"].reason == reason
    assert errors["ray"].message == errors["indexed"].message
    out = workdir / "out"
    assert not out.exists() or not list(out.iterdir()), "nothing published, no staging left"


def test_engine_ray_without_ray_installed_is_unsupported(workdir: Path) -> None:
    """An image without Ray: the import fails, and the run fails at once as bad input."""
    shadow = workdir / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no module named ray (shadowed)')\n")
    source = write_jsonl(["some text " * 30], workdir / "raw" / "a.jsonl")
    output = workdir / "out"
    spec = spec_for(output, [{"uri": str(source), "format": "jsonl"}], engine="ray")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    run = run_component(
        "data", task_config("DataPipeline", spec, str(output)), workdir, env={"PYTHONPATH": path}
    )
    assert run.returncode == ExitCode.BAD_INPUT, run.output[-3000:]
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "Unsupported"
    assert "no Ray" in run.result.error.message
    assert not output.exists()
