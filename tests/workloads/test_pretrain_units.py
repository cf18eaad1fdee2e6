"""The trainer's pure parts, in process: data order, the run plan, schedules, metrics."""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelsmith.api.pretrain import Architecture, Schedule
from modelsmith_runtime import storage
from modelsmith_runtime.shards import PackedDataset
from modelsmith_runtime.train.data import Batches, SequenceOrder, TokenWindows
from modelsmith_runtime.train.main import check
from tests.workloads.tiny_dataset import pretrain_config, save_tokenizer, train_tokenizer
from tests.workloads.tiny_dataset import write_dataset as write


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> PackedDataset:
    root = tmp_path_factory.mktemp("packed")
    write(root, sequence_length=64, documents_count=200)
    return PackedDataset.open(root)


def test_ranks_split_each_global_batch_disjointly_and_completely(packed: PackedDataset) -> None:
    windows = TokenWindows.open(packed, 64)
    order = SequenceOrder(len(windows), seed=3)
    single = Batches(windows, order, global_batch=8, micro_batch=2, rank=0, world=1)
    ranks = [Batches(windows, order, 8, 2, rank=r, world=2) for r in range(2)]
    for position in (0, 8, 800):
        whole = np.concatenate(single.step(position))
        parts = [np.concatenate(b.step(position)) for b in ranks]
        assert [len(m) for m in ranks[0].step(position)] == [2, 2]  # two micro-batches each
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_order_is_seeded_and_each_epoch_visits_every_window_once(packed: PackedDataset) -> None:
    n = len(TokenWindows.open(packed, 64))
    order = SequenceOrder(n, seed=5)
    first, second = order.take(0, n), order.take(n, n)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(n))
    assert first.tolist() != second.tolist()  # a new permutation per epoch
    np.testing.assert_array_equal(SequenceOrder(n, seed=5).take(n - 3, 6), order.take(n - 3, 6))
    assert SequenceOrder(n, seed=6).take(0, n).tolist() != first.tolist()


def test_windows_shorter_than_the_packed_rows_cut_them_in_order(packed: PackedDataset) -> None:
    halves = TokenWindows.open(packed, 32)
    assert len(halves) == 2 * len(packed)
    rows = halves.gather(np.array([0, 1, 2]))
    np.testing.assert_array_equal(np.concatenate(rows[:2]), packed[0])
    np.testing.assert_array_equal(rows[2], packed[1][:32])
    assert rows.dtype == np.int64


def _plan_for(tmp_path: Path, **kwargs: Any) -> Any:
    config = kwargs.pop("config", None) or pretrain_config(
        str(tmp_path / "data"), str(tmp_path / "out"), **kwargs
    )
    (tmp_path / "task.json").write_text(json.dumps(config))
    return check(tmp_path / "task.json")


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    with storage.publish(str(tmp_path / "data")) as (staging, _):
        write(staging, documents_count=100)
    return tmp_path / "data"


def test_plan_derives_accumulation_vocab_and_length(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    training = {"globalBatchSize": 16, "microBatchSize": 2, "steps": None, "tokens": 10_000}
    plan = _plan_for(tmp_path, training=training)
    assert plan.accumulation == 4  # 16 / (2 x 2 ranks)
    assert plan.total_steps == 10  # ceil(10000 / (16 x 64))
    assert plan.vocab_size == json.loads((dataset_dir / "index.json").read_text())["vocabSize"]
    assert plan.checkpoints == f"{tmp_path / 'out'}-checkpoints"
    assert plan.tokenizer_dir == dataset_dir / "tokenizer"


def test_a_tokenizer_input_replaces_the_datasets(dataset_dir: Path, tmp_path: Path) -> None:
    with storage.publish(str(tmp_path / "tok")) as (staging, _):
        save_tokenizer(train_tokenizer(["just a few words"] * 10, 300), staging, 64)
    config = pretrain_config(str(dataset_dir), str(tmp_path / "out"))
    config["inputs"]["tokenizer"] = str(tmp_path / "tok")
    assert _plan_for(tmp_path, config=config).tokenizer_dir == tmp_path / "tok"


def test_schedules_warm_up_then_decay_as_named() -> None:
    import torch

    from modelsmith_runtime.train.schedule import build_scheduler

    def curve(schedule: Schedule) -> list[float]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = build_scheduler(opt, schedule, warmup=10, total=100)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs

    for schedule in Schedule:
        lrs = curve(schedule)
        assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    cosine, linear, constant, wsd = (curve(s) for s in Schedule)
    assert cosine[55] == pytest.approx(0.5) and cosine[99] < 0.001
    assert linear[55] == pytest.approx(0.5) and linear[99] == pytest.approx(1 / 90)
    assert constant[99] == 1.0
    assert wsd[79] == 1.0 and wsd[90] < 0.6 and wsd[99] < 0.01  # decays over the last 20%


def test_flops_count_only_the_experts_a_token_reaches() -> None:
    from modelsmith_runtime.train.model import (
        SpecialTokens,
        flops_per_token,
        model_config,
        parameter_counts,
    )

    tokens = SpecialTokens(None, 0, None)
    dense = model_config(Architecture(layers=2, hidden_size=64, heads=4), 256, 32, tokens)
    total, active = parameter_counts(dense)
    assert total == active
    assert flops_per_token(dense, 32) == 6 * (total - 256 * 64) + 12 * 2 * 64 * 32
    moe_arch = Architecture.model_validate(
        {"type": "moe", "layers": 2, "hiddenSize": 64, "heads": 4, "experts": 8, "topK": 2}
    )
    moe_total, moe_active = parameter_counts(model_config(moe_arch, 256, 32, tokens))
    experts = 2 * 8 * 3 * 64 * 192  # layers x experts x SwiGLU (3 matrices) x hidden x mlp
    assert moe_total - moe_active == experts * (8 - 2) // 8  # 6 of 8 experts idle per token


def test_prometheus_gauges_on_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelsmith_runtime.train.metrics import MetricsSink

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MODELSMITH_METRICS_PORT", str(port))
    sink = MetricsSink(enabled=True, tensorboard_dir=None)
    sink.record(7, {"loss": 2.5, "tokens_per_second": 1000.0})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "modelsmith_train_loss 2.5" in text
    assert "modelsmith_train_step 7.0" in text
    assert "modelsmith_train_tokens_per_second 1000.0" in text


def _deepspeed_plan(tmp_path: Path, precision: str, **distribution: Any) -> Any:
    training = {"globalBatchSize": 8, "microBatchSize": 4, "gradClip": 0.5}
    return _plan_for(
        tmp_path,
        training=training,
        precision=precision,
        distribution={"strategy": "deepspeed", **distribution},
    )


@pytest.mark.usefixtures("dataset_dir")
def test_deepspeed_config_follows_the_spec_and_deepspeed_accepts_it(tmp_path: Path) -> None:
    """DeepSpeed's own parser reads the config back (it rejects unknown keys), so a
    misspelt section fails here rather than in a pod."""
    from deepspeed.runtime.config import DeepSpeedConfig

    from modelsmith_runtime.train.deepspeed_config import DEFAULT_ZERO_STAGE, deepspeed_config

    default = deepspeed_config(_deepspeed_plan(tmp_path, "bf16", offload="cpu"), "cpu")
    parsed = DeepSpeedConfig(default)
    assert parsed.zero_config.stage == DEFAULT_ZERO_STAGE == 2
    assert parsed.zero_config.offload_optimizer.device == "cpu"
    assert parsed.zero_config.offload_param is None  # weights are partitioned at stage 3 only
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (4, 2)
    assert parsed.gradient_clipping == 0.5
    assert parsed.zero_force_ds_cpu_optimizer is False  # torch's AdamW is allowed to offload
    assert str(parsed.communication_data_type) == "torch.float32"

    zero3 = deepspeed_config(_deepspeed_plan(tmp_path, "fp16", zeroStage=3, offload="cpu"), "cuda")
    parsed = DeepSpeedConfig(zero3)
    assert parsed.zero_config.stage == 3
    assert parsed.zero_config.offload_param.device == "cpu"
    assert parsed.zero_config.offload_param.pin_memory  # pinned host memory on GPUs
    fp16 = parsed.float16_config
    assert fp16.enabled and fp16.loss_scale == 0  # 0: dynamic loss scaling
    assert (fp16.initial_scale_power, fp16.loss_scale_window, fp16.hysteresis) == (16, 2000, 1)

    plain = deepspeed_config(_deepspeed_plan(tmp_path, "fp32", zeroStage=1), "cpu")
    assert plain["zero_optimization"] == {"stage": 1}
    assert "bf16" not in plain and "fp16" not in plain
    assert DeepSpeedConfig(plain).zero_config.stage == 1


@pytest.mark.usefixtures("dataset_dir")
def test_deepspeed_is_a_strategy_unless_the_image_lacks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelsmith_runtime.errors import BadInputError

    plan = _deepspeed_plan(tmp_path, "bf16", zeroStage=3, offload="cpu")
    assert plan.spec.distribution.zero_stage == 3
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what an image without it imports
    with pytest.raises(BadInputError) as error:
        _deepspeed_plan(tmp_path, "bf16")
    assert error.value.reason == "Unsupported"
    assert "modelsmith-runtime[deepspeed]" in error.value.message


def test_workload_errors_survive_pickling_as_ray_sends_them_to_the_driver() -> None:
    import pickle

    from modelsmith.contract import CheckpointInfo, Result
    from modelsmith_runtime.errors import BadInputError, TransientError

    bad = pickle.loads(pickle.dumps(BadInputError("NaNLoss", "step 3: the loss is nan")))  # noqa: S301
    assert (type(bad), bad.reason, bad.message) == (
        BadInputError,
        "NaNLoss",
        "step 3: the loss is nan",
    )
    partial = Result(checkpoint=CheckpointInfo(uri="/c/step-00000004", step=4))
    flaky = pickle.loads(pickle.dumps(TransientError("TrainingFailed", "boom", partial)))  # noqa: S301
    assert (flaky.reason, flaky.message, flaky.partial) == ("TrainingFailed", "boom", partial)
