"""Quality scores in `modelsmith-runtime data`: character entropy and domain similarity.

One corpus holds four planted kinds: prose of the wanted domain (the generator's
vocabulary for one seed), prose of another domain (another seed's vocabulary, the
same shape and length), and low- and high-entropy strings that pass every other
filter. The reference corpus is more prose of the wanted domain, none of it in the
corpus. The run must keep exactly the wanted prose and count every other document
under its own reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import ExitCode

from .conftest import Run, run_component, run_data_workers, task_config
from .corpus import entropy_junk, generate, kept_texts, write_jsonl, write_text_dir

JUNK_EACH = 6


def _prose(count: int, seed: int) -> list[str]:
    corpus = generate(originals=count, exact=0, near=0, related=0, junk_each=0, seed=seed)
    return [d.canonical for d in corpus.docs]


@dataclass(frozen=True)
class Planted:
    wanted: list[str]
    other: list[str]
    low: list[str]
    high: list[str]
    raw: Path
    reference: Path

    @property
    def texts(self) -> list[str]:
        return self.wanted + self.other + self.low + self.high


def _spec(out: Path, raw: Path, filters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "output": {"uri": str(out)},
        "sources": [{"uri": str(raw), "format": "jsonl"}],
        "filters": filters,
        "tokenizer": {"train": {"vocabSize": 300}},
        "packing": {"sequenceLength": 32},
        **extra,
    }


FILTERS = {
    "entropy": {"minBits": 3.5, "maxBits": 5.5},
    "domain": {"reference": {"uri": "/from/the/task/config"}, "format": "text"},
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    root = tmp_path_factory.mktemp("quality")
    domain = _prose(90, seed=21)
    low, high = entropy_junk(JUNK_EACH)
    planted = Planted(
        wanted=domain[:50],
        other=_prose(25, seed=22),
        low=low,
        high=high,
        raw=root / "raw",
        reference=write_text_dir(domain[50:], root / "reference"),
    )
    texts = planted.texts
    order = sorted(range(len(texts)), key=lambda i: (i * 37) % len(texts))  # interleaved
    write_jsonl([texts[i] for i in order], planted.raw / "corpus.jsonl")
    return planted


def _run(planted: Planted, workdir: Path, **extra: Any) -> tuple[Run, Path]:
    out = workdir / "dataset"
    config = task_config(
        "DataPipeline",
        _spec(out, planted.raw, FILTERS, **extra),
        str(out),
        domainReference=str(planted.reference),
    )
    return run_component("data", config, workdir / "run"), out


def test_entropy_and_domain_keep_the_wanted_prose_and_count_the_rest(
    planted: Planted, workdir: Path
) -> None:
    run, out = _run(planted, workdir)
    assert run.returncode == 0, run.output
    assert run.result is not None
    metrics = run.result.metrics
    assert metrics["removed_entropy_low"] == len(planted.low)
    assert metrics["removed_entropy_high"] == len(planted.high)
    assert metrics["removed_domain"] == len(planted.other)
    assert metrics["documents_out"] == len(planted.wanted)
    assert kept_texts(out, set(planted.texts)) == set(planted.wanted)
    report = json.loads((out / "report.json").read_text())
    for reason, docs in (
        ("entropy_low", planted.low),
        ("entropy_high", planted.high),
        ("domain", planted.other),
    ):
        removed = report["removed"][reason]
        assert removed["documents"] == len(docs), reason
        assert removed["bytes"] == sum(len(t.encode()) for t in docs), reason


def test_two_workers_score_the_domain_as_one_does(planted: Planted, workdir: Path) -> None:
    """Each worker fits its own vectorizer on the reference: the same one."""
    out = workdir / "dataset"
    spec = _spec(out, planted.raw, FILTERS, workers=2)
    config = task_config("DataPipeline", spec, str(out), domainReference=str(planted.reference))
    worker0, worker1 = run_data_workers(config, workdir)
    assert worker1.returncode == 0, worker1.output
    assert worker0.returncode == 0, worker0.output
    assert worker1.result is not None and worker0.result is not None
    assert 0 < worker1.result.metrics["removed_domain"] < len(planted.other)
    assert worker0.result.metrics["removed_domain"] == len(planted.other)
    assert kept_texts(out, set(planted.texts)) == set(planted.wanted)


def _bad(planted: Planted, workdir: Path, case: str) -> dict[str, Any]:
    out = workdir / "out" / "dataset"
    reference = str(planted.reference)
    filters: dict[str, Any] = FILTERS
    extra: dict[str, Any] = {}
    if case == "empty":
        reference = str(write_jsonl([], workdir / "empty.jsonl"))
        filters = {"domain": {"reference": {"uri": reference}}}
    elif case == "blank":
        reference = str(write_jsonl(["   ", "\n"], workdir / "blank.jsonl"))
        filters = {"domain": {"reference": {"uri": reference}}}
    elif case == "missing":
        reference = str(workdir / "nowhere")
    elif case == "band":
        filters = {"entropy": {"minBits": 4.5, "maxBits": 4.0}}
    elif case == "permutations":
        extra = {"dedup": {"near": "simhash", "permutations": 64}}
    spec = _spec(out, planted.raw, filters, **extra)
    return task_config("DataPipeline", spec, str(out), domainReference=reference)


BAD = [
    ("empty", "EmptyReference", "filters.domain.reference: "),
    ("blank", "EmptyReference", "holds no documents"),
    ("missing", "MissingInput", "filters.domain.reference: "),
    ("band", "InvalidSpec", "filters.entropy.minBits must be below filters.entropy.maxBits"),
    ("permutations", "InvalidSpec", "dedup.permutations are MinHash's: near simhash has none"),
]


@pytest.mark.parametrize(("case", "reason", "mentions"), BAD, ids=[b[0] for b in BAD])
def test_bad_quality_settings_fail_at_once(
    planted: Planted, workdir: Path, case: str, reason: str, mentions: str
) -> None:
    config = _bad(planted, workdir, case)
    run = run_component("data", config, workdir / "run")
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == reason, run.result.error
    assert mentions in run.result.error.message, run.result.error.message
    assert not (workdir / "out").exists()
