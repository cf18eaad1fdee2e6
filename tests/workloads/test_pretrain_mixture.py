"""The loss-driven data mixture, end to end in real processes.

A DataPipeline packs two planted sources: "easy", sentences of a tiny grammar (the
model learns them fast, its loss keeps falling), and "hard", random digit strings
(nothing to learn past the digits' frequencies, its loss soon stops falling). The
pipeline must tag every sequence with its source; a loss-driven pretraining run on
the shards must move weight to "hard", inside the clip bounds; a run killed after a
checkpoint and resumed must end with exactly the uninterrupted run's weights; and a
static run must train exactly as a run on the same shards without tags.

The runs are started together, two at a time, once per module (a training process
spends most of its life importing torch on one core).
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer

from modelsmith.api.mixture import Mixture
from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime import storage
from modelsmith_runtime.shards import INDEX, PackedDataset
from modelsmith_runtime.train.mixture import update
from tests.workloads.conftest import Run, pod_env, run_component, task_config
from tests.workloads.corpus import write_jsonl
from tests.workloads.test_pretrain_train import Resumed, _kill_and_resume
from tests.workloads.tiny_dataset import pretrain_config, train_records

SEQUENCE = 64
MIXTURE = {"learningRate": 0.1, "minWeight": 0.5, "maxWeight": 1.5, "updateIntervalSteps": 4}
STEPS = 40


EASY = (
    "the cat sees the red ball in the park.",
    "a dog likes a warm bed at home.",
    "my sister paints the blue sky near the sea.",
)


def _easy(count: int, seed: int) -> list[str]:
    """Three sentences in a random order: a model learns them in a few steps."""
    rng = random.Random(seed)  # noqa: S311 - test data
    return [" ".join(rng.choice(EASY) for _ in range(rng.randint(4, 12))) for _ in range(count)]


def _digits(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - test data
    return [
        " ".join(
            "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 7)))
            for _ in range(rng.randint(30, 60))
        )
        for _ in range(count)
    ]


def test_the_update_moves_weight_to_the_slowest_source_and_clips() -> None:
    spec = Mixture(learning_rate=1.0, min_weight=0.5, max_weight=2.0)
    # Source 1's loss fell least: one standard deviation above, it gains e^1 (clipped).
    assert update([1.0, 1.9, 1.0], {0: 0.3, 1: 0.0, 2: 0.3}, spec)[1] == 2.0
    new = update([1.0, 1.0, 1.0], {0: 0.4, 1: 0.1, 2: 0.1}, spec)
    assert new[0] < 1.0 < new[1] == new[2]
    assert new[0] == max(0.5, math.exp(-math.sqrt(2)))  # (mean - f) / std = -sqrt(2)
    assert update([1.0, 1.0], {0: 0.2, 1: 0.2}, spec) == [1.0, 1.0]  # alike: no signal
    assert update([1.0, 1.0], {0: 0.2}, spec) == [1.0, 1.0]  # one measured: nothing to compare


@dataclass(frozen=True)
class Data:
    uri: Path
    run: Run
    easy: list[str]
    hard: list[str]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("mixture-data")
    easy, hard = _easy(300, seed=3), _digits(120, seed=4)
    write_jsonl(easy, root / "raw" / "easy" / "a.jsonl")
    write_jsonl(hard, root / "raw" / "hard" / "b.jsonl")
    out = root / "dataset"
    spec = {
        "output": {"uri": str(out)},
        "sources": [
            {"uri": str(root / "raw" / "easy"), "format": "jsonl"},
            {"uri": str(root / "raw" / "hard"), "format": "jsonl"},
        ],
        "filters": {"length": {"minChars": 1}, "repetition": None},
        "dedup": {"exact": True, "near": "none"},
        "tokenizer": {"train": {"vocabSize": 320, "minFrequency": 2}},
        "packing": {"sequenceLength": SEQUENCE, "shardSizeMb": 1},
    }
    run = run_component("data", task_config("DataPipeline", spec, str(out)), root / "run")
    assert run.returncode == 0, run.output
    return Data(out, run, easy, hard)


def test_the_pipeline_tags_every_sequence_with_its_source(data: Data) -> None:
    index = json.loads((data.uri / INDEX).read_text())
    assert index["sources"] == ["easy", "hard"]
    dataset = PackedDataset.open(data.uri)
    tags = np.concatenate([dataset.source_ids(i) for i in range(len(index["shards"]))])
    assert len(tags) == len(dataset) == index["sequences"]
    assert np.bincount(tags, minlength=2).tolist() == index["sourceSequences"]
    tokenizer = Tokenizer.from_file(str(data.uri / "tokenizer" / "tokenizer.json"))
    eos = "<|endoftext|>"
    streams: dict[int, list[int]] = {0: [], 1: []}
    for i, tag in enumerate(tags.tolist()):
        text = tokenizer.decode(dataset[i].tolist(), skip_special_tokens=False)
        letters, digits = re.search(r"[a-zA-Z]", text.replace(eos, "")), re.search(r"\d", text)
        assert (letters is None, digits is None) == ((True, False) if tag else (False, True)), text
        streams[tag].extend(dataset[i].tolist())
    # Each source's rows, in order, are its documents packed back to back (no other
    # source's text in between): every complete document decodes to a planted one.
    for tag, planted in ((0, data.easy), (1, data.hard)):
        pieces = tokenizer.decode(streams[tag], skip_special_tokens=False).split(eos)
        assert set(pieces[:-1]) <= set(planted)  # [-1]: the start of the dropped tail
        assert len(pieces) - 1 >= 0.9 * len(planted)
    # The mixture's share: hard documents are longer, so it holds a good part of the rows.
    assert 0.2 < tags.mean() < 0.8
    report = json.loads((data.uri / "report.json").read_text())
    assert [s["name"] for s in report["sources"]] == ["easy", "hard"]
    assert [s["sequences"] for s in report["sources"]] == index["sourceSequences"]


def untagged_copy(dataset: Path, target: Path) -> Path:
    """The same shards published in the format of before source tags (no sources)."""
    with storage.publish(str(target), {"kind": "DataPipeline"}) as (staging, _):
        shutil.copytree(dataset, staging, dirs_exist_ok=True)
        (staging / COMPLETION_MARKER).unlink()
        index = json.loads((staging / INDEX).read_text())
        for key in ("sources", "sourceSequences"):
            del index[key]
        for shard in index["shards"]:
            (staging / shard.pop("sourceFile")).unlink()
        (staging / INDEX).write_text(json.dumps(index))
    return target


@dataclass(frozen=True)
class Runs:
    adaptive: Run
    resumed: Resumed
    static: Run
    untagged: Run
    two_ranks: Run
    """The adaptive run as one pod of two torchrun ranks (gloo), same global batch."""


def _config(data: Path, output: Path, **spec: Any) -> dict[str, Any]:
    return pretrain_config(
        str(data), str(output), training={"steps": STEPS, "learningRate": 3e-3}, **spec
    )


@pytest.fixture(scope="module")
def runs(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("mixture-runs")
    untagged = untagged_copy(data.uri, root / "untagged-dataset")
    with ThreadPoolExecutor(max_workers=2) as pool:
        adaptive = pool.submit(
            run_component,
            "pretrain",
            _config(data.uri, root / "a" / "m", mixture=MIXTURE),
            root / "a",
        )
        resumed = pool.submit(
            _kill_and_resume, _config(data.uri, root / "b" / "m", mixture=MIXTURE), root / "b"
        )
        static = pool.submit(
            run_component,
            "pretrain",
            _config(data.uri, root / "s" / "m", mixture={"strategy": "static"}),
            root / "s",
        )
        plain = pool.submit(
            run_component, "pretrain", _config(untagged, root / "u" / "m"), root / "u"
        )
        two_ranks = pool.submit(
            run_component,
            "pretrain",
            _config(data.uri, root / "r2" / "m", mixture=MIXTURE),
            root / "r2",
            env=pod_env(2),
        )
        done = Runs(
            adaptive.result(),
            resumed.result(),
            static.result(),
            plain.result(),
            two_ranks.result(),
        )
    assert done.adaptive.returncode == 0, done.adaptive.output
    return done


def _mixture(run: Run) -> dict[str, Any]:
    assert run.result is not None and run.result.uri, run.output
    report: dict[str, Any] = json.loads((Path(run.result.uri) / "mixture.json").read_text())
    return report


def test_weight_moves_to_the_source_whose_loss_falls_slowest(runs: Runs) -> None:
    report = _mixture(runs.adaptive)
    assert report["sources"] == ["easy", "hard"]
    history = report["history"]
    assert [h["step"] for h in history] == list(range(0, STEPS + 1, 4))
    assert history[0]["weights"] == [1.0, 1.0]
    for entry in history:
        assert all(0.5 <= w <= 1.5 for w in entry["weights"]), entry
    # The losses measured per source: easy ends far below hard, and fell by more.
    last = history[-1]["loss"]
    assert last[0] < last[1] - 0.5, last
    first = history[1]["loss"]
    assert first[0] - last[0] > first[1] - last[1]
    final = report["weights"]
    assert final["hard"] > 1.2 and final["easy"] < 0.8, history
    # The draws followed the weights: in the second half of the run hard's share of
    # what was drawn is well above its share of the windows.
    windows, half = report["windows"], history[len(history) // 2]
    drawn = [a - b for a, b in zip(report["sampled"], half["sampled"], strict=True)]
    assert sum(drawn) == (STEPS - half["step"]) * 8
    assert drawn[1] / sum(drawn) > windows[1] / sum(windows) + 0.08, (drawn, windows)
    metrics = runs.adaptive.result.metrics if runs.adaptive.result else {}
    assert metrics["mixture_weight_hard"] == final["hard"]
    assert metrics["mixture_weight_easy"] == final["easy"]
    assert metrics["source_loss_easy"] == last[0]
    records = train_records(runs.adaptive.output)
    assert records[-1]["mixture_weight"] == final
    assert "weights after step 8:" in runs.adaptive.output.replace("mixture weights", "weights")


def test_a_resumed_run_ends_with_exactly_the_uninterrupted_weights(runs: Runs) -> None:
    resumed, reference = runs.resumed, runs.adaptive
    assert 10 <= resumed.killed_at < STEPS
    assert resumed.rerun.returncode == 0, resumed.rerun.output
    assert f"resuming from step {resumed.killed_at} of {STEPS}" in resumed.rerun.output
    mine, theirs = _mixture(resumed.rerun), _mixture(reference)
    assert mine["weights"] == theirs["weights"]  # exactly: no tolerance
    assert [h["weights"] for h in mine["history"]] == [h["weights"] for h in theirs["history"]]
    assert mine["sampled"] == theirs["sampled"]
    assert resumed.rerun.result is not None and reference.result is not None
    for key, value in reference.result.metrics.items():
        if key.startswith("mixture_weight_"):
            assert resumed.rerun.result.metrics[key] == value, key


def test_two_ranks_draw_one_batch_between_them_and_move_the_weights_alike(runs: Runs) -> None:
    """Each rank draws the whole step from the same weights and reads its own slice;
    the weights come from all-reduced per-source sums, so no rank can disagree and
    every step draws exactly the global batch."""
    run = runs.two_ranks
    assert run.returncode == 0, run.output
    report = _mixture(run)
    history = report["history"]
    assert [h["step"] for h in history] == list(range(0, STEPS + 1, 4))
    assert all(sum(h["sampled"]) == h["step"] * 8 for h in history), history
    for entry in history:
        assert all(0.5 <= w <= 1.5 for w in entry["weights"]), entry
    final = report["weights"]
    assert final["hard"] > 1.2 and final["easy"] < 0.8, history


def test_static_mixture_trains_as_the_dataset_without_tags(runs: Runs) -> None:
    static, plain = runs.static, runs.untagged
    assert static.returncode == 0, static.output
    assert plain.returncode == 0, plain.output
    assert static.result is not None and plain.result is not None
    losses = [(r["step"], r["loss"]) for r in train_records(static.output)]
    assert losses == [(r["step"], r["loss"]) for r in train_records(plain.output)]
    assert static.result.metrics["loss"] == plain.result.metrics["loss"]
    assert not any(k.startswith("mixture_") for k in static.result.metrics)
    assert not (Path(static.result.uri or "") / "mixture.json").exists()
    assert "mixture_weight" not in train_records(static.output)[-1]


def test_loss_driven_needs_a_dataset_of_several_sources(data: Data, tmp_path: Path) -> None:
    untagged = untagged_copy(data.uri, tmp_path / "one-source")
    run = run_component("pretrain", _config(untagged, tmp_path / "m", mixture=MIXTURE), tmp_path)
    assert run.returncode == 2, run.output
    assert run.result is not None and run.result.error is not None
    assert "mixture.strategy loss-driven needs a dataset of two or more sources" in (
        run.result.error.message
    )


def test_the_weights_are_prometheus_gauges_labelled_by_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import urllib.request

    from modelsmith_runtime.train.metrics import MetricsSink

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MODELSMITH_METRICS_PORT", str(port))
    sink = MetricsSink(True, None)
    try:
        weights = {"easy": 0.9, "hard": 1.1}
        sink.record(4, {"loss": 2.5, "total_steps": 8.0}, {"mixture_weight": weights})
        assert sink._prom is not None
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        if sink._prom is not None:
            sink._prom.close()
    assert 'modelsmith_train_mixture_weight{source="easy"} 0.9' in text
    assert 'modelsmith_train_mixture_weight{source="hard"} 1.1' in text
