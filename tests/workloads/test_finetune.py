"""`modelsmith-runtime finetune` as real processes: LoRA, merged LoRA on chat, full
fine-tuning, and QLoRA (bitsandbytes NF4 on the CPU) merged into a plain model.

A fine-tuning process spends most of its life importing torch, transformers and peft
on one core, so the three runs start together, two at a time, once per module; the
tests then check what each one published.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime import storage
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, run_component
from tests.workloads.observe import Observed, run_observed
from tests.workloads.tiny_dataset import VERBS
from tests.workloads.tiny_model import (
    HYPER,
    LORA,
    chat_records,
    finetune_config,
    instruction_records,
    qa_pairs,
    tiny_model,
    write_jsonl,
)


@dataclass(frozen=True)
class Runs:
    base: str
    root: Path
    lora: Run
    chat: Run
    full: Run
    qlora: Run
    observed: Observed
    """The lora run, scraped and reporting progress while it ran."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("finetune")
    instructions = write_jsonl(root / "instructions.jsonl", instruction_records(64))
    chats = write_jsonl(root / "chat.jsonl", chat_records(64))
    with storage.publish(str(root / "completions")) as (staging, _):  # a dataset directory
        records = [{"prompt": f"Q: {q}\nA:", "completion": f" {a}"} for q, a in qa_pairs(64, 3)]
        write_jsonl(staging / "part-0.jsonl", records[:32])
        write_jsonl(staging / "part-1.jsonl", records[32:])
    configs = {
        "lora": finetune_config(base, str(instructions), str(root / "lora"), lora=LORA),
        "chat": finetune_config(
            base, str(chats), str(root / "chat"), format="chat", lora=LORA, mergeAdapter=True
        ),
        "full": finetune_config(
            base,
            str(root / "completions"),
            str(root / "full"),
            method="full",
            precision="bf16",
            hyperparameters={**HYPER, "learningRate": 1e-3, "epochs": 1},
        ),
        "qlora": finetune_config(
            base,
            str(instructions),
            str(root / "qlora"),
            method="qlora",
            lora=LORA,
            mergeAdapter=True,
            precision="fp32",
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        observing = pool.submit(run_observed, "finetune", configs.pop("lora"), root / "work-lora")
        futures = {
            name: pool.submit(run_component, "finetune", config, root / f"work-{name}")
            for name, config in configs.items()
        }
        done = {name: future.result() for name, future in futures.items()}
        observed = observing.result()
    return Runs(base=base, root=root, lora=observed.run, observed=observed, **done)


def _succeeded(run: Run) -> dict[str, float]:
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.error is None, run.output
    assert run.result.uri is not None
    assert run.result.digest == artifact_digest(Path(run.result.uri))
    metrics = run.result.metrics
    for key in ("eval_loss_before", "eval_loss", "eval_perplexity", "train_loss", "steps"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    return metrics


def test_lora_lowers_eval_loss_and_publishes_the_adapter(runs: Runs) -> None:
    metrics = _succeeded(runs.lora)
    assert metrics["eval_loss"] < 0.8 * metrics["eval_loss_before"], metrics
    assert metrics["eval_examples"] == 13  # round(64 * 0.2), the rest trains
    assert metrics["steps"] == math.ceil(51 * 2 / 8)
    out = runs.root / "lora"
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "config.json").exists()  # an adapter, not a model
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == runs.base
    assert adapter["r"] == 8
    assert set(adapter["target_modules"]) == set(LORA["targetModules"])
    pointer = json.loads((out / "modelsmith_base.json").read_text())
    assert pointer == {"uri": runs.base, "digest": artifact_digest(Path(runs.base))}
    marker = json.loads((out / COMPLETION_MARKER).read_text())
    assert marker["method"] == "lora" and marker["merged"] is False


def test_adapter_loads_on_its_base_with_peft(runs: Runs) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(runs.base)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(input_ids=ids).logits
    adapted = PeftModel.from_pretrained(base, str(runs.root / "lora"))
    assert not torch.allclose(adapted(input_ids=ids).logits, before)


def test_chat_lora_merged_is_a_plain_model_that_answers(runs: Runs) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    metrics = _succeeded(runs.chat)
    assert metrics["eval_loss"] < metrics["eval_loss_before"], metrics
    out = runs.root / "chat"
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert not any("lora" in name for name, _ in model.named_parameters())
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What does the cat do at home?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    generated = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(generated[0, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert any(verb in answer for verb in VERBS), answer  # learned the answer's shape


def test_full_finetune_from_a_dataset_directory_in_bf16(runs: Runs) -> None:
    metrics = _succeeded(runs.full)
    assert metrics["eval_loss"] < metrics["eval_loss_before"], metrics
    assert metrics["train_examples"] + metrics["eval_examples"] == 64  # both files read
    out = runs.root / "full"
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()


def test_qlora_trains_on_a_4bit_base_and_merges_into_full_precision(runs: Runs) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    metrics = _succeeded(runs.qlora)
    assert metrics["eval_loss"] < 0.8 * metrics["eval_loss_before"], metrics
    out = runs.root / "qlora"
    marker = json.loads((out / COMPLETION_MARKER).read_text())
    assert marker["method"] == "qlora" and marker["merged"] is True
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config, "merged into a 16/32-bit base, not NF4"
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(runs.base)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert not torch.allclose(merged(input_ids=ids).logits, base(input_ids=ids).logits)


def test_a_running_finetune_serves_its_gauges_and_reports_progress(runs: Runs) -> None:
    metrics = _succeeded(runs.lora)
    final = runs.observed.metrics()
    assert final["modelsmith_finetune_step"] == final["modelsmith_finetune_total_steps"]
    assert final["modelsmith_finetune_step"] == metrics["steps"]
    assert final["modelsmith_finetune_eval_loss"] == pytest.approx(metrics["eval_loss"])
    before = final["modelsmith_finetune_eval_loss_before"]
    assert before == pytest.approx(metrics["eval_loss_before"])
    assert final["modelsmith_finetune_learning_rate"] >= 0
    reports = [body for _auth, body in runs.observed.reports]
    assert reports and reports[-1] == {"step": metrics["steps"], "total": metrics["steps"]}
