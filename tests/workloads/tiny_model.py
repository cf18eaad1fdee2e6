"""A tiny published base model, so the FineTune and QuantizeJob tests need no pretraining run.

What a PretrainJob publishes, in miniature: a byte-level BPE tokenizer trained with HF
tokenizers on the generated grammar of `tiny_dataset`, wrapped by transformers'
PreTrainedTokenizerFast with eos/pad tokens and a ChatML chat template, and a 2-layer
LlamaForCausalLM trained for a few dozen steps on the same text, so that perplexity
means something (a random model's perplexity is the vocabulary size whatever one does
to it). Everything is written by save_pretrained and published with `storage.publish`.

Building it takes a few seconds; `tiny_model` builds it once per test session and every
test reads the same artifact (inputs are read-only to the workloads).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime import storage
from tests.workloads.conftest import task_config
from tests.workloads.tiny_dataset import OBJECTS, PLACES, SUBJECTS, VERBS, documents

EOS = "<|endoftext|>"
PAD = "<|pad|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SEQUENCE = 128
STEPS = 60


def tokenizer(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(CHAT_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=SEQUENCE,
    )


def qa_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """Questions whose answer is in the question: learnable in a few dozen steps."""
    rng = random.Random(seed)  # noqa: S311 - test data
    pairs = []
    for _ in range(count):
        subject, verb = rng.choice(SUBJECTS), rng.choice(VERBS)
        obj, place = rng.choice(OBJECTS), rng.choice(PLACES)
        pairs.append((f"What does {subject} do {place}?", f"{subject.capitalize()} {verb} {obj}."))
    return pairs


def instruction_records(count: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"instruction": q, "output": a} for q, a in qa_pairs(count, seed)]


def chat_records(count: int, seed: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in qa_pairs(count, seed)
    ]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@dataclass(frozen=True)
class Size:
    hidden: int = 64
    intermediate: int = 192
    layers: int = 2
    heads: int = 4
    steps: int = STEPS


def write_model(directory: Path, seed: int = 0, size: Size | None = None) -> None:
    """Train and save the model and tokenizer into ``directory`` (no completion marker).

    One thread: on a busy machine OpenMP's spinning threads make 2 threads 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(directory, seed, size or Size())
    finally:
        torch.set_num_threads(threads)


def _train(directory: Path, seed: int, size: Size) -> None:
    texts = list(documents(800, seed))
    texts += [f"{q} {a}" for q, a in qa_pairs(200, seed + 1)]
    tok = tokenizer(texts)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=SEQUENCE,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    stream: list[int] = []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        stream.extend([*ids, tok.eos_token_id])
    windows = torch.tensor(stream[: len(stream) // 64 * 64]).view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(size.steps):
        batch = windows[torch.randint(len(windows), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))


def publish_model(uri: str, seed: int = 0, size: Size | None = None) -> str:
    """A complete model artifact at ``uri``, as a PretrainJob would publish it."""
    with storage.publish(uri, {"kind": "PretrainJob"}) as (staging, _digest):
        write_model(staging, seed, size)
    return uri


def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's one tiny model artifact (built on first use, then reused).

    A plain function rather than a fixture: test modules that import a session fixture
    each get their own copy of it, and the model would be trained once per module.
    """
    path = tmp_path_factory.getbasetemp() / "tiny-model"
    if not (path / COMPLETION_MARKER).is_file():
        publish_model(str(path))
    return str(path)


HYPER = {
    "learningRate": 3e-3,
    "epochs": 2,
    "batchSize": 8,
    "microBatchSize": 4,
    "sequenceLength": 128,
    "warmupRatio": 0.1,
}
LORA = {
    "rank": 8,
    "alpha": 16,
    "dropout": 0.0,
    "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"],
}


def finetune_config(base: str, dataset: str, output: str, **spec: Any) -> dict[str, Any]:
    """A small LoRA FineTune task config in fp32; override any field with keywords."""
    body = {
        "output": {"uri": output},
        "baseModel": {"uri": base},
        "dataset": {"uri": dataset},
        "format": "instruction",
        "evalSplit": 0.2,
        "method": "lora",
        "hyperparameters": HYPER,
        "precision": "fp32",
        **spec,
    }
    return task_config("FineTune", body, output, baseModel=base, dataset=dataset)


def quantize_config(model: str, output: str, method: str, **spec: Any) -> dict[str, Any]:
    """A QuantizeJob task config; inputs follow the spec's calibration and evalDataset."""
    body = {"output": {"uri": output}, "model": {"uri": model}, "method": method, **spec}
    inputs = {"model": model}
    if "calibration" in spec:
        inputs["calibration"] = spec["calibration"]["dataset"]["uri"]
    if "evalDataset" in spec.get("qualityGate", {}):
        inputs["evalDataset"] = spec["qualityGate"]["evalDataset"]["uri"]
    return task_config("QuantizeJob", body, output, **inputs)
