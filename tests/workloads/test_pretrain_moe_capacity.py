"""MoE expert capacity as real `modelsmith-runtime pretrain` processes.

A tiny Mixtral (4 experts, top-2) on the tiny corpus, four ways: dropless with and
without the load-balancing loss, and with a capacity factor far below 1 (tokens must
drop) and far above (nothing may drop, so the run is the dropless one, step for step).
Capacity is per micro-batch: T = microBatchSize x sequenceLength = 4 x 64 tokens.
"""

from __future__ import annotations

import math
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.workloads.conftest import Run, run_component
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset, train_records

EXPERTS, TOP_K, TOKENS = 4, 2, 4 * 64
MOE = {"type": "moe", "experts": EXPERTS, "topK": TOP_K, "intermediateSize": 128}
AUX = 0.1
CASES: dict[str, dict[str, Any]] = {
    "dropless": {**MOE, "auxLossCoef": AUX},
    "unbalanced": {**MOE, "auxLossCoef": 0.0},
    "small": {**MOE, "auxLossCoef": AUX, "capacityFactor": 0.5},
    "large": {**MOE, "auxLossCoef": AUX, "capacityFactor": 16},
}
STEPS = 20


@dataclass(frozen=True)
class Runs:
    by_name: dict[str, Run]

    def records(self, name: str) -> list[dict[str, Any]]:
        run = self.by_name[name]
        assert run.returncode == 0, run.output
        return train_records(run.output)

    def metrics(self, name: str) -> dict[str, float]:
        result = self.by_name[name].result
        assert result is not None, self.by_name[name].output
        return result.metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("moe")
    dataset = str(root / "dataset")
    publish_dataset(dataset)

    def run(name: str) -> Run:
        config = pretrain_config(
            dataset,
            str(root / name / "model"),
            architecture=CASES[name],
            training={"steps": STEPS},
        )
        return run_component("pretrain", config, root / name)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return Runs(dict(zip(CASES, pool.map(run, CASES), strict=True)))


def test_a_small_capacity_drops_what_the_bound_implies_and_still_learns(runs: Runs) -> None:
    capacity = math.ceil(0.5 * TOKENS * TOP_K / EXPERTS)
    # Each expert keeps at most `capacity` of the T x k slots; a token's top-k experts are
    # distinct, so one expert is routed at most T slots: between these bounds it drops.
    least, most = 1 - EXPERTS * capacity / (TOKENS * TOP_K), 1 - capacity / TOKENS
    records = runs.records("small")
    for r in records:
        assert least - 1e-9 <= r["dropped_token_fraction"] <= most + 1e-9, r
        assert r["dropped_token_fraction"] > 0
    metrics = runs.metrics("small")
    assert metrics["dropped_token_fraction"] == records[-1]["dropped_token_fraction"]
    assert metrics["loss"] < records[0]["loss"] - 1.0
    assert "aux_loss" in records[-1]  # the balancing loss still runs beside the capacity
    shares = [metrics[f"expert_load_fraction_{i}"] for i in range(EXPERTS)]
    assert sum(shares) == pytest.approx(1.0)
    # An expert keeps at most its capacity: processed utilisation is at most
    # capacity x experts / (T x k) = capacityFactor.
    assert 0 <= metrics["expert_load_std"] <= 0.5


def test_a_large_capacity_is_the_dropless_run(runs: Runs) -> None:
    large, dropless = runs.records("large"), runs.records("dropless")
    assert all(r["dropped_token_fraction"] == 0 for r in large)
    assert [r["loss"] for r in large] == [r["loss"] for r in dropless]
    assert [r["expert_load_std"] for r in large] == [r["expert_load_std"] for r in dropless]


def test_expert_load_is_reported_and_the_balancing_loss_lowers_its_spread(runs: Runs) -> None:
    balanced, unbalanced = runs.metrics("dropless"), runs.metrics("unbalanced")
    for metrics in (balanced, unbalanced):
        assert metrics["dropped_token_fraction"] == 0
        assert metrics["expert_load_std"] == metrics["routed_load_std"]  # dropless
        shares = [metrics[f"expert_load_fraction_{i}"] for i in range(EXPERTS)]
        assert sum(shares) == pytest.approx(1.0) and all(0 <= s <= 1 for s in shares)
    assert balanced["expert_load_std"] < unbalanced["expert_load_std"]


def test_prometheus_exposes_the_routing_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelsmith_runtime.train.metrics import MetricsSink

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MODELSMITH_METRICS_PORT", str(port))
    sink = MetricsSink(enabled=True, tensorboard_dir=None)
    shares = {"expert_load_fraction_0": 0.625, "expert_load_fraction_1": 0.375}
    sink.record(3, {"expert_load_std": 0.25, "dropped_token_fraction": 0.125, **shares})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "modelsmith_train_expert_load_std 0.25" in text
    assert "modelsmith_train_dropped_token_fraction 0.125" in text
    assert 'modelsmith_train_expert_load_fraction{expert="0"} 0.625' in text
    assert 'modelsmith_train_expert_load_fraction{expert="1"} 0.375' in text


def test_first_choices_are_granted_capacity_before_second_choices() -> None:
    import torch

    from modelsmith_runtime.train.routing import limit_to_capacity

    index = torch.tensor([[0, 1], [1, 0], [0, 2], [0, 1]])
    weights = torch.full((4, 2), 0.5)
    kept, kept_weights = limit_to_capacity(index, weights, experts=3, slots=2)
    # Expert 0: first choices of tokens 0, 2 (token 3's first choice and token 1's second
    # are past capacity); expert 1: token 1's first choice, then token 0's second.
    assert kept.tolist() == [[0, 1], [1, 3], [0, 2], [3, 3]]
    assert kept_weights.tolist() == [[0.5, 0.5], [0.5, 0.0], [0.5, 0.5], [0.0, 0.0]]
