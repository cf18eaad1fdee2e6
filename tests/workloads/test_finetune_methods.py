"""`modelsmith-runtime finetune` with prefix tuning, bottleneck adapters and a frozen
full fine-tune, as real processes on the tiny model (started together, two at a time).

What "trains only its parameters" means is checked from outside: the published
adapter, attached to the untouched base artifact in this process, reproduces the
eval loss the run reported, so the run's final model was exactly base + artifact.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, run_component
from tests.workloads.tiny_model import (
    HYPER,
    Size,
    finetune_config,
    instruction_records,
    tiny_model,
    write_jsonl,
)

TINY = Size()
VIRTUAL_TOKENS = 8
REDUCTION = 8
FREEZE = {"layers": 1, "modules": ["down_proj"]}


@dataclass(frozen=True)
class Runs:
    base: str
    root: Path
    prefix: Run
    adapter: Run
    frozen: Run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("finetune-methods")
    data = str(write_jsonl(root / "train.jsonl", instruction_records(64)))
    configs = {
        "prefix": finetune_config(
            base,
            data,
            str(root / "prefix"),
            method="prefix",
            prefix={"virtualTokens": VIRTUAL_TOKENS},
            hyperparameters={**HYPER, "learningRate": 3e-2},
        ),
        "adapter": finetune_config(
            base,
            data,
            str(root / "adapter"),
            method="adapter",
            adapter={"reductionFactor": REDUCTION},
            hyperparameters={**HYPER, "learningRate": 1e-2},
        ),
        "frozen": finetune_config(
            base,
            data,
            str(root / "frozen"),
            method="full",
            freeze=FREEZE,
            hyperparameters={**HYPER, "learningRate": 1e-3},
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_component, "finetune", config, root / f"work-{name}")
            for name, config in configs.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    return Runs(base=base, root=root, **done)


def _succeeded(run: Run) -> dict[str, float]:
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.error is None, run.output
    assert run.result.uri is not None
    assert run.result.digest == artifact_digest(Path(run.result.uri))
    metrics = run.result.metrics
    assert metrics["eval_loss"] < 0.8 * metrics["eval_loss_before"], metrics
    return metrics


def _base(runs: Runs) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(runs.base, dtype=torch.float32).eval()


def _base_parameters(runs: Runs) -> int:
    return sum(p.numel() for p in _base(runs).parameters())


def _eval_loss(model: Any, runs: Runs) -> float:
    """The held-out loss as the run computes it: the same split, one example at a time."""
    from modelsmith.api.finetune import DatasetFormat
    from modelsmith_runtime.finetune.loop import split
    from modelsmith_runtime.finetune.records import read_examples
    from modelsmith_runtime.finetune.tokens import IGNORE, tokenize_all
    from modelsmith_runtime.hfmodel import load_tokenizer

    examples = read_examples(str(runs.root / "train.jsonl"), DatasetFormat.INSTRUCTION)
    tokenized = tokenize_all(load_tokenizer(Path(runs.base)), examples, HYPER["sequenceLength"])
    _train, held_out = split(tokenized, 0.2)
    total, count = 0.0, 0
    with torch.inference_mode():
        for item in held_out:
            ids = torch.tensor([item.input_ids])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            labels = torch.tensor(item.labels[1:])
            total += float(
                torch.nn.functional.cross_entropy(
                    logits[0, :-1].float(), labels, ignore_index=IGNORE, reduction="sum"
                )
            )
            count += int((labels != IGNORE).sum())
    return total / count


def _published_as_adapter(runs: Runs, name: str, method: str) -> Path:
    out = runs.root / name
    assert not (out / "config.json").exists(), "an adapter, not a model"
    pointer = json.loads((out / "modelsmith_base.json").read_text())
    assert pointer == {"uri": runs.base, "digest": artifact_digest(Path(runs.base))}
    marker = json.loads((out / COMPLETION_MARKER).read_text())
    assert marker["method"] == method and marker["merged"] is False
    return out


def test_prefix_tuning_trains_its_prefix_alone(runs: Runs) -> None:
    from peft import PeftModel

    metrics = _succeeded(runs.prefix)
    prefix = VIRTUAL_TOKENS * TINY.layers * 2 * TINY.hidden  # a key and a value per layer
    assert metrics["trainable_parameters"] == prefix
    assert metrics["trainable_share"] == pytest.approx(prefix / (_base_parameters(runs) + prefix))
    assert 0.005 < metrics["trainable_share"] < 0.03  # a 7B Llama's 20-token prefix: 0.08%
    out = _published_as_adapter(runs, "prefix", "prefix")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING"
    assert config["num_virtual_tokens"] == VIRTUAL_TOKENS
    assert config["base_model_name_or_path"] == runs.base
    tuned = PeftModel.from_pretrained(_base(runs), str(out)).eval()
    assert _eval_loss(tuned, runs) == pytest.approx(metrics["eval_loss"], rel=1e-4)


def test_bottleneck_adapters_train_alone_and_start_as_the_base(runs: Runs) -> None:
    from safetensors.torch import load_file

    from modelsmith_runtime.finetune import bottleneck

    metrics = _succeeded(runs.adapter)
    width = TINY.hidden // REDUCTION
    per_adapter = 2 * TINY.hidden * width + width + TINY.hidden
    assert metrics["trainable_parameters"] == TINY.layers * 2 * per_adapter  # attn and mlp
    total = _base_parameters(runs) + metrics["trainable_parameters"]
    assert metrics["trainable_share"] == pytest.approx(metrics["trainable_parameters"] / total)
    assert 0.01 < metrics["trainable_share"] < 0.05
    # up is zero-initialised: before training the adapted model is the base itself.
    frozen = _succeeded(runs.frozen)
    assert metrics["eval_loss_before"] == pytest.approx(frozen["eval_loss_before"], rel=1e-6)
    out = _published_as_adapter(runs, "adapter", "adapter")
    tensors = load_file(str(out / bottleneck.WEIGHTS))
    assert tensors and all(".bottleneck_adapter." in name for name in tensors)
    config = json.loads((out / bottleneck.CONFIG).read_text())
    assert config["bottleneckSize"] == width and config["targetModules"] == ["self_attn", "mlp"]
    tuned = bottleneck.load(_base(runs), out).eval()
    assert _eval_loss(tuned, runs) == pytest.approx(metrics["eval_loss"], rel=1e-4)


def _frozen(name: str) -> bool:
    """What FREEZE names: every embedding, layer 0, and each down_proj."""
    return name.startswith(("model.embed_tokens.", "model.layers.0.")) or ".down_proj." in name


def test_freeze_keeps_the_named_weights_bit_identical_and_trains_the_rest(runs: Runs) -> None:
    from safetensors.torch import load_file

    metrics = _succeeded(runs.frozen)
    before = load_file(str(Path(runs.base) / "model.safetensors"))
    after = load_file(str(runs.root / "frozen" / "model.safetensors"))
    assert before.keys() == after.keys()
    frozen = sorted(name for name in before if _frozen(name))
    training = sorted(name for name in before if not _frozen(name))
    assert "model.layers.1.mlp.down_proj.weight" in frozen
    assert {"lm_head.weight", "model.norm.weight", "model.layers.1.mlp.up_proj.weight"} <= set(
        training
    )
    assert all(torch.equal(before[name], after[name]) for name in frozen)
    changed = [name for name in training if not torch.equal(before[name], after[name])]
    assert changed == training  # every weight not frozen moved
    kept = sum(before[name].numel() for name in frozen)
    total = sum(t.numel() for t in before.values())
    assert metrics["trainable_parameters"] == total - kept
    assert math.isclose(metrics["trainable_share"], (total - kept) / total)
