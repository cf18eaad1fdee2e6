"""A small packed dataset artifact, so the trainer's tests need no data pipeline.

It is what a DataPipeline publishes, in miniature: generated English-like text (a tiny
grammar, so there is structure for a model to learn), a byte-level BPE tokenizer
trained on it with HF tokenizers, documents packed with an end-of-text separator
into fixed-length sequences by `shards.ShardWriter`, published with
`storage.publish`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from modelsmith.contract import TaskConfig
from modelsmith_runtime import shards, storage

EOT = "<|endoftext|>"

SUBJECTS = ("the cat", "a dog", "the old man", "my sister", "the small bird", "our teacher")
VERBS = ("sees", "likes", "follows", "paints", "finds", "carries")
OBJECTS = ("the red ball", "a green tree", "the long river", "a warm bed", "the blue sky")
PLACES = ("in the park", "at home", "near the sea", "after school", "before dinner")


def documents(count: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    for _ in range(count):
        sentences = [
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
            f"{rng.choice(PLACES)}."
            for _ in range(rng.randint(2, 6))
        ]
        yield " ".join(sentences).capitalize()


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path, max_length: int) -> None:
    """The Hugging Face layout AutoTokenizer reads: tokenizer.json and its config."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "model_max_length": max_length,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_dataset(
    root: Path,
    *,
    sequence_length: int = 64,
    vocab_size: int = 320,
    documents_count: int = 600,
    seed: int = 0,
) -> dict[str, object]:
    """Write the dataset files into ``root`` (no completion marker); returns index.json."""
    texts = list(documents(documents_count, seed))
    tokenizer = train_tokenizer(texts, vocab_size)
    save_tokenizer(tokenizer, root / shards.TOKENIZER, sequence_length)
    eot = tokenizer.token_to_id(EOT)
    assert eot is not None
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        stream.extend([*encoding.ids, eot])
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    writer = shards.ShardWriter(root, sequence_length, vocab, shard_bytes=16 * 1024)
    usable = len(stream) // sequence_length * sequence_length
    for row in np.asarray(stream[:usable], dtype=np.int64).reshape(-1, sequence_length):
        writer.add(row)
    return writer.close(documents=documents_count)


def publish_dataset(uri: str, **kwargs: int) -> dict[str, object]:
    """A complete dataset artifact at ``uri``, as a DataPipeline would publish it."""
    with storage.publish(uri, {"kind": "DataPipeline"}) as (staging, _digest):
        return write_dataset(staging, **kwargs)  # published as the block exits


def pretrain_config(
    dataset: str,
    output: str,
    *,
    architecture: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A tiny dense PretrainJob task config (fp32, so CPU runs are exact); override
    any part with keyword arguments."""
    body: dict[str, Any] = {
        "output": {"uri": output},
        "dataset": {"uri": dataset},
        "architecture": {"layers": 2, "hiddenSize": 64, "heads": 4, **(architecture or {})},
        "training": {
            "globalBatchSize": 8,
            "microBatchSize": 4,
            "sequenceLength": 64,
            "learningRate": 3e-3,
            "warmupRatio": 0.1,
            "steps": 40,
            "seed": 1,
            **(training or {}),
        },
        "precision": "fp32",
        "distribution": {"strategy": "ddp"},
        "checkpoint": {"intervalSteps": 10, "keepLast": 2},
        **spec,
    }
    return TaskConfig(
        kind="PretrainJob", name="test", inputs={"dataset": dataset}, output=output, spec=body
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def train_records(log: str) -> list[dict[str, Any]]:
    """The per-interval metric lines a run logged, oldest first."""
    records = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
            message = json.loads(entry["message"]) if isinstance(entry, dict) else None
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(message, dict) and message.get("event") == "train":
            records.append(message)
    return records


def evicted_pretrain(
    config: dict[str, Any], workdir: Path, env: dict[str, str], steps: int = 3
) -> tuple[int, str | None, str]:
    """A pretraining run SIGTERMed after ``steps`` steps, as an eviction ends a pod:
    its exit code, termination message (or None) and log."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "task.json").write_text(json.dumps(config))
    log, out_path = workdir / "termination-log", workdir / "out.log"
    full = {**os.environ, **env, "MODELSMITH_TERMINATION_LOG": str(log)}
    full["MODELSMITH_LOG_EVERY"] = "1"
    argv = [sys.executable, "-m", "modelsmith_runtime.cli", "pretrain"]
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [*argv, f"--task-config={workdir / 'task.json'}"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while len(train_records(out_path.read_text())) < steps:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the run did not reach step {steps}\n{out_path.read_text()}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=120)
    message = log.read_text() if log.exists() else None
    return returncode, message, out_path.read_text()
