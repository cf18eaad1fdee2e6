"""The perplexity filter with a real Hugging Face causal LM whose answers we know.

The reference model is a GPT-2 checkpoint with no transformer blocks, a zero-gain
final layer norm and an untied head: whatever the context, its logits are the
head's first column, which we fill with the smoothed unigram log-frequencies of the
tokenizer's tokens on prose. transformers loads and runs it like any GPT-2, and the
test can compute every document's perplexity itself with numpy, so it checks the
filter's decisions one by one, not just that "something" was removed. Writing it
needs only safetensors' numpy API: this test process never imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import random
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelsmith.api.datapipeline import TrainTokenizer
from modelsmith_runtime.data.tokenize import TokenizerInfo, save_trained, train
from modelsmith_runtime.storage import publish

from .conftest import run_component, task_config
from .corpus import generate, write_jsonl

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="the perplexity filter needs torch and transformers",
)

SCORED_TOKENS = 512
"""What PerplexityScorer reads of a document (the model allows more)."""


def _garbage(rng: random.Random, count: int) -> list[str]:
    alphabet = string.ascii_letters + string.digits + "#$%&@*+=<>~^"
    return [
        " ".join(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9))) for _ in range(120)
        )
        for _ in range(count)
    ]


def _unigram_model(
    root: Path, prose: list[str]
) -> tuple[Path, TokenizerInfo, np.ndarray[Any, Any]]:
    """Publish a unigram LM over a tokenizer trained on ``prose``; returns its log-probs."""
    from safetensors.numpy import save_file

    staging_tokenizer = root / "tokenizer"
    info = save_trained(
        train(iter(prose), len(prose), TrainTokenizer(vocabSize=400)), staging_tokenizer, 1024
    )
    vocab = info.vocab_size
    counts = np.ones(vocab)
    for encoding in info.tokenizer.encode_batch(prose, add_special_tokens=False):
        np.add.at(counts, encoding.ids, 1)
    log_probs = np.log(counts / counts.sum()).astype(np.float32)
    head = np.zeros((vocab, 2), dtype=np.float32)
    head[:, 0] = log_probs
    weights = {
        "transformer.wte.weight": np.random.default_rng(0).normal(size=(vocab, 2)),
        "transformer.wpe.weight": np.random.default_rng(1).normal(size=(1024, 2)),
        "transformer.ln_f.weight": np.zeros(2),
        "transformer.ln_f.bias": np.array([1.0, 0.0]),
        "lm_head.weight": head,
    }
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab,
        "n_positions": 1024,
        "n_embd": 2,
        "n_layer": 0,
        "n_head": 1,
        "tie_word_embeddings": False,
        "bos_token_id": info.eos_id,
        "eos_token_id": info.eos_id,
    }
    uri = root / "reference-model"
    with publish(str(uri)) as (staging, _):
        save_file(
            {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()},
            str(staging / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (staging / "config.json").write_text(json.dumps(config))
        for path in staging_tokenizer.iterdir():
            (staging / path.name).write_bytes(path.read_bytes())
    return uri, info, log_probs


def _perplexity(text: str, info: TokenizerInfo, log_probs: np.ndarray[Any, Any]) -> float:
    ids = info.tokenizer.encode(text, add_special_tokens=False).ids[:SCORED_TOKENS]
    return float(np.exp(-log_probs[ids[1:]].astype(np.float64).mean()))


def test_perplexity_filter_drops_exactly_the_documents_above_the_threshold(
    workdir: Path,
) -> None:
    corpus = generate(originals=160, exact=0, near=0, related=0, junk_each=0, seed=5)
    training, prose = corpus.texts[:120], corpus.texts[120:]
    rng = random.Random(1)  # noqa: S311 - test data, not secrets
    garbage = _garbage(rng, 10)
    model, info, log_probs = _unigram_model(workdir, training)

    texts = prose + garbage
    rng.shuffle(texts)
    expected = {text: _perplexity(text, info, log_probs) for text in texts}
    assert max(expected[t] for t in prose) * 3 < min(expected[t] for t in garbage)
    # A threshold inside the prose: the filter must split it exactly where we do.
    ordered = sorted(expected.values())
    cut = len(ordered) * 2 // 3
    threshold = (ordered[cut - 1] + ordered[cut]) / 2
    too_high = {t for t, p in expected.items() if p > threshold}
    assert set(garbage) < too_high

    write_jsonl(texts, workdir / "raw.jsonl")
    out = workdir / "out"
    spec = {
        "output": {"uri": str(out)},
        "sources": [{"uri": str(workdir / "raw.jsonl"), "format": "jsonl"}],
        "filters": {
            "repetition": None,
            "perplexity": {"referenceModel": {"uri": str(model)}, "maxPerplexity": threshold},
        },
        "tokenizer": {"existing": {"uri": str(model)}},
        "packing": {"sequenceLength": 32},
    }
    run = run_component(
        "data",
        task_config(
            "DataPipeline", spec, str(out), referenceModel=str(model), tokenizer=str(model)
        ),
        workdir / "run",
    )
    assert run.returncode == 0, run.output
    assert run.result is not None
    assert run.result.metrics["removed_perplexity"] == len(too_high)
    assert run.result.metrics["documents_out"] == len(texts) - len(too_high)
    report = json.loads((out / "report.json").read_text())
    removed = report["removed"]["perplexity"]
    assert removed["bytes"] == sum(len(t.encode()) for t in too_high)
