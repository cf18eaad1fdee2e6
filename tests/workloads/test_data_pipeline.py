"""`modelsmith-runtime data` as a real process on a generated corpus with planted truth."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime.shards import PackedDataset
from modelsmith_runtime.storage import artifact_digest, publish

from .conftest import Run, run_component, run_data_workers, task_config
from .corpus import (
    BLOCKLIST,
    JUNK,
    MAX_CHARS,
    REASONS,
    Corpus,
    generate,
    kept_texts,
    read_back,
    read_sources,
    write_jsonl,
    write_parquet,
    write_text_dir,
)

CORRUPT_LINES = 3
VOCAB = 512
SEQUENCE = 64


def spec_for(output: Path, sources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "output": {"uri": str(output)},
        "sources": sources,
        "filters": {
            "length": {"minChars": 200, "maxChars": MAX_CHARS},
            "blocklist": BLOCKLIST,
        },
        "dedup": {"threshold": 0.8, "permutations": 128, "ngram": 5},
        "tokenizer": {"train": {"vocabSize": VOCAB, "minFrequency": 2}},
        "packing": {"sequenceLength": SEQUENCE, "shardSizeMb": 1},
        **extra,
    }


@dataclass(frozen=True)
class Ran:
    corpus: Corpus
    root: Path
    out: Path
    run: Run
    config: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        assert self.run.result is not None, self.run.output
        return self.run.result.metrics


def _corpus_file(corpus: Corpus, path: Path) -> Path:
    """The corpus as jsonl, with a few corrupt lines that must be skipped and counted."""
    write_jsonl(corpus.texts, path)
    lines = path.read_text().splitlines()
    for n in range(CORRUPT_LINES):
        lines.insert(50 * (n + 1), '{"text": "cut short' if n % 2 else '["not", "an object"]')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    root = tmp_path_factory.mktemp("pipeline")
    corpus = generate()
    _corpus_file(corpus, root / "raw" / "corpus.jsonl")
    out = root / "dataset"
    config = task_config(
        "DataPipeline", spec_for(out, [{"uri": str(root / "raw"), "format": "jsonl"}]), str(out)
    )
    ran = Ran(corpus, root, out, run_component("data", config, root / "run"), config)
    assert ran.run.returncode == 0, ran.run.output
    return ran


def test_planted_junk_is_removed_and_counted_by_reason(pipeline: Ran) -> None:
    metrics, corpus = pipeline.metrics, pipeline.corpus
    for kind in JUNK:
        assert metrics[f"removed_{REASONS[kind]}"] == corpus.counts[kind], kind
        assert metrics[f"removed_{REASONS[kind]}_bytes"] > 0
    assert metrics["invalid_documents"] == CORRUPT_LINES
    assert metrics["documents_in"] == len(corpus.docs) + CORRUPT_LINES
    removed = sum(v for k, v in metrics.items() if k.startswith("removed_") and "bytes" not in k)
    assert metrics["documents_out"] + removed == metrics["documents_in"]

    report = json.loads((pipeline.out / "report.json").read_text())
    assert report["removed"]["blocklist"]["documents"] == corpus.counts["blocked"]
    assert report["documents"]["out"] == metrics["documents_out"]
    junk = {d.canonical for d in corpus.docs if d.kind in JUNK}
    assert not junk & set(read_back(pipeline.out)[0])


def test_planted_duplicates_are_removed_with_high_precision_and_recall(pipeline: Ran) -> None:
    metrics, corpus = pipeline.metrics, pipeline.corpus
    assert metrics["exact_duplicates"] == corpus.expected_exact()
    candidates = set(corpus.units()) | {d.canonical for d in corpus.docs}
    kept = kept_texts(pipeline.out, candidates)
    precision, recall = corpus.scores(kept)
    assert recall >= 0.9, recall
    assert precision >= 0.9, precision
    assert kept == corpus.expected_kept(), "every cluster keeps exactly its first document"
    reached = metrics["documents_out"] + metrics["exact_duplicates"] + metrics["near_duplicates"]
    rate = (metrics["exact_duplicates"] + metrics["near_duplicates"]) / reached
    assert metrics["duplicate_rate"] == pytest.approx(rate)


def test_tokenizer_is_trained_to_size_and_shards_decode_to_the_documents(pipeline: Ran) -> None:
    out = pipeline.out
    tokenizer = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == VOCAB
    config = json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"

    dataset = PackedDataset.open(out)
    assert dataset.sequence_length == SEQUENCE
    assert dataset.vocab_size == VOCAB
    assert len(dataset) == pipeline.metrics["sequences"]
    assert len(dataset) * SEQUENCE == pipeline.metrics["tokens"]
    assert all(dataset[i].max() < VOCAB for i in range(len(dataset)))
    documents, _ = read_back(out)
    assert len(documents) >= pipeline.metrics["documents_out"] - 1
    assert set(documents) <= pipeline.corpus.expected_kept()

    assert pipeline.run.result is not None
    assert pipeline.run.result.uri == str(out)
    assert pipeline.run.result.digest == artifact_digest(out)
    assert (out / COMPLETION_MARKER).is_file()
    assert not list(out.parent.glob(".staging-*"))
    assert not (out.parent / "dataset.parts").exists()


def test_existing_tokenizer_is_used_and_copied(pipeline: Ran, workdir: Path) -> None:
    tokenizer_uri = workdir / "tokenizer"
    with publish(str(tokenizer_uri)) as (staging, _):
        for path in (pipeline.out / "tokenizer").iterdir():
            (staging / path.name).write_bytes(path.read_bytes())
    docs = [d.canonical for d in pipeline.corpus.docs if d.kind == "original"][:40]
    write_jsonl(docs, workdir / "raw.jsonl")
    out = workdir / "out"
    spec = spec_for(
        out,
        [{"uri": f"file://{workdir / 'raw.jsonl'}", "format": "jsonl"}],
        tokenizer={"existing": {"uri": str(tokenizer_uri)}},
    )
    run = run_component(
        "data",
        task_config("DataPipeline", spec, str(out), tokenizer=str(tokenizer_uri)),
        workdir / "run",
    )
    assert run.returncode == 0, run.output
    original = (pipeline.out / "tokenizer" / "tokenizer.json").read_bytes()
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == original
    assert not (out / "tokenizer" / COMPLETION_MARKER).exists()
    report = json.loads((out / "report.json").read_text())
    assert report["tokenizer"]["trained"] is False
    complete, partial = read_back(out)
    assert set(complete) <= set(docs)
    assert len(complete) + bool(partial) == len(docs)


def test_parquet_text_and_gzipped_jsonl_sources_mix_by_weight(workdir: Path) -> None:
    corpus = generate(originals=90, exact=0, near=0, related=0, junk_each=0, seed=11)
    texts = corpus.texts
    write_parquet(texts[:30], workdir / "parquet" / "a.parquet", field_name="content")
    write_text_dir(texts[30:60], workdir / "text")
    (workdir / "text" / "_SUCCESS").write_text("")
    plain = write_jsonl(texts[60:], workdir / "jsonl" / "b.jsonl")
    (workdir / "jsonl" / "b.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    out = workdir / "out"
    sources = [
        {"uri": str(workdir / "parquet"), "format": "parquet", "textField": "content"},
        {"uri": str(workdir / "text"), "format": "text", "weight": 2},
        {"uri": f"file://{workdir}/jsonl/b.jsonl.gz", "format": "jsonl", "weight": 0.5},
    ]
    run = run_component(
        "data", task_config("DataPipeline", spec_for(out, sources), str(out)), workdir / "run"
    )
    assert run.returncode == 0, run.output
    report = json.loads((out / "report.json").read_text())
    stats = report["sources"]
    assert [s["documentsIn"] for s in stats] == [30, 30, 30]
    assert [s["documentsOut"] for s in stats] == [30, 30, 30]
    assert stats[0]["documentsPacked"] == 30
    assert stats[1]["documentsPacked"] == 60
    assert 8 <= stats[2]["documentsPacked"] <= 22
    per_source = read_sources(out)  # one stream per source: a tail cut short in each
    found = kept_texts(out, set(texts))
    assert set(texts[:60]) <= found, "every parquet row and text file is in the shards"
    assert found <= set(texts)
    assert sum(len(c) + bool(p) for c, p in per_source) == report["documents"]["packed"]
    for (complete, _), planted in zip(
        per_source, (texts[:30], texts[30:60], texts[60:]), strict=True
    ):
        assert set(complete) <= set(planted), "every sequence holds its own source's text"


def _same_dataset(a: Path, b: Path) -> None:
    one, two = PackedDataset.open(a), PackedDataset.open(b)
    assert len(one) == len(two)
    assert all(np.array_equal(x, y) for x, y in zip(one.arrays, two.arrays, strict=True))
    tokenizer = "tokenizer/tokenizer.json"
    assert (a / tokenizer).read_bytes() == (b / tokenizer).read_bytes()


def test_two_concurrent_workers_keep_what_one_worker_keeps(pipeline: Ran, workdir: Path) -> None:
    out = workdir / "dataset"
    config = {**pipeline.config, "output": str(out)}
    config["spec"] = {**config["spec"], "output": {"uri": str(out)}, "workers": 2}
    worker0, worker1 = run_data_workers(config, workdir)
    assert worker0.returncode == 0, worker0.output
    assert worker1.returncode == 0, worker1.output
    assert worker1.result is not None and worker1.result.uri is None
    assert 0 < worker1.result.metrics["documents_in"] < pipeline.metrics["documents_in"]
    assert worker0.result is not None and worker0.result.uri == str(out)
    for key in ("documents_out", "exact_duplicates", "near_duplicates", "tokens"):
        assert worker0.result.metrics[key] == pipeline.metrics[key], key
    _same_dataset(out, pipeline.out)
    assert not (workdir / "dataset.parts").exists()

    # Records go round-robin to workers: many duplicates had their original elsewhere.
    first_seen: dict[str, int] = {}
    crossed = 0
    for record, doc in enumerate(pipeline.corpus.docs):
        if doc.cluster is not None:
            owner = first_seen.setdefault(str(doc.cluster), record % 2)
            crossed += owner != record % 2
    assert crossed >= 10


def test_worker_zero_times_out_then_its_retry_reuses_its_part(pipeline: Ran, workdir: Path) -> None:
    out = workdir / "dataset"
    config = {**pipeline.config, "output": str(out)}
    env = {"MODELSMITH_WORKERS": "2", "MODELSMITH_DATA_PARTS_TIMEOUT": "1"}
    run = run_component("data", config, workdir / "run", env=env)
    assert run.returncode == 1, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "WorkersTimeout"
    assert not out.exists()
    assert (workdir / "dataset.parts" / "worker-00000" / COMPLETION_MARKER).is_file()

    late = run_component(
        "data", config, workdir / "w1", env={**env, "MODELSMITH_WORKER_INDEX": "1"}
    )
    assert late.returncode == 0, late.output
    retry = run_component("data", config, workdir / "run", env=env)
    assert retry.returncode == 0, retry.output
    assert "already complete, reusing it" in retry.output
    _same_dataset(out, pipeline.out)
