"""Everything about a run that follows from the spec and the inputs, checked up front.

Pure and light (no torch): it runs before the heavy imports, so a spec the trainer
cannot honour fails with exit code 2 in about a second. The CRD's rules hold already:
the spec was parsed with the API models, which check each rule's Python form next to
its CEL (a task config can come from outside the API server: a test, a rerun by hand).
What is left here is what only the trainer knows: its image, its world size.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from modelsmith.api.pretrain import PretrainJobSpec, Strategy
from modelsmith.contract import Producer
from modelsmith_runtime import hfmodel, shards, storage
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.task import Task
from modelsmith_runtime.train.incremental import check_architecture, read_config

CHECKPOINT_SUFFIX = "-checkpoints"
"""Checkpoints live beside the output (`<output>-checkpoints/step-00000100/`), on the
same storage, so a retried pod on any node finds them and they never pollute the
published model directory."""

DEFAULT_LOG_EVERY = 10
"""Steps between metric lines; MODELSMITH_LOG_EVERY overrides (the first and the last
step are always logged)."""


@dataclass(frozen=True)
class Plan:
    spec: PretrainJobSpec
    dataset_dir: Path
    tokenizer_dir: Path
    output: str
    checkpoints: str
    producer: Producer
    world: int
    sequence_length: int
    vocab_size: int
    total_steps: int
    accumulation: int
    """Micro-batches per rank per optimizer step."""
    warmup_steps: int
    log_every: int
    init_dir: Path | None = None
    """spec.initFrom's model, checked against the architecture; None: random init."""

    @property
    def tokens_per_step(self) -> int:
        return self.spec.training.global_batch_size * self.sequence_length


def _invalid(message: str) -> BadInputError:
    return BadInputError("InvalidSpec", message)


def _unsupported(message: str) -> BadInputError:
    return BadInputError("Unsupported", message)


def check_spec(spec: PretrainJobSpec, world: int) -> None:
    """What the schema alone lets through but this trainer cannot run."""
    d, t = spec.distribution, spec.training
    if d.strategy == Strategy.DEEPSPEED and importlib.util.find_spec("deepspeed") is None:
        raise _unsupported(
            "distribution.strategy deepspeed: DeepSpeed is not installed in this image; "
            "install modelsmith-runtime[deepspeed], or use fsdp (ZeRO-3 equivalent) or ddp"
        )
    if t.global_batch_size % (t.micro_batch_size * world):
        raise _invalid(
            f"training.globalBatchSize {t.global_batch_size} is not a multiple of "
            f"microBatchSize {t.micro_batch_size} x {world} ranks"
        )


def _tokenizer_dir(task: Task[PretrainJobSpec], dataset_dir: Path) -> Path:
    uri = task.config.inputs.get("tokenizer")
    if uri:
        return storage.open_artifact(uri, "tokenizer")
    path = dataset_dir / shards.TOKENIZER
    if not path.is_dir():
        raise BadInputError(
            "MissingTokenizer",
            f"dataset {dataset_dir} has no {shards.TOKENIZER}/ and no tokenizer input is given: "
            "the published model would have no tokenizer",
        )
    return path


def _tokenizer_vocab(path: Path) -> int | None:
    """The tokenizer's vocabulary including added tokens, when it has a tokenizer.json."""
    file = path / "tokenizer.json"
    if not file.is_file():
        if not (path / "tokenizer_config.json").is_file():
            raise BadInputError("InvalidTokenizer", f"{path}: no tokenizer.json or config")
        return None
    from tokenizers import Tokenizer

    try:
        return int(Tokenizer.from_file(str(file)).get_vocab_size(with_added_tokens=True))
    except Exception as exc:
        raise BadInputError("InvalidTokenizer", f"{file}: {exc}") from exc


def _read_index(dataset_dir: Path) -> dict[str, object]:
    try:
        index = json.loads((dataset_dir / shards.INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError("InvalidDataset", f"{dataset_dir}/{shards.INDEX}: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != shards.FORMAT:
        raise BadInputError("InvalidDataset", f"{dataset_dir}: not a {shards.FORMAT} dataset")
    return index


def make_plan(task: Task[PretrainJobSpec]) -> Plan:
    spec = task.spec
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_spec(spec, world)
    dataset_dir = storage.open_artifact(task.input("dataset"), "dataset")
    index = _read_index(dataset_dir)
    data_vocab = int(str(index.get("vocabSize", 0)))
    tokenizer_dir = _tokenizer_dir(task, dataset_dir)
    tok_vocab = _tokenizer_vocab(tokenizer_dir)
    init_dir = None
    if spec.init_from is not None:
        init_dir = hfmodel.open_model(task.input("initFrom"), "initFrom")
    init = read_config(init_dir) if init_dir else {}
    vocab = (
        spec.architecture.vocab_size
        or int(init.get("vocab_size") or 0)
        or max(data_vocab, tok_vocab or 0)
    )
    if vocab < max(data_vocab, tok_vocab or 0):
        raise _invalid(
            f"architecture.vocabSize {vocab} is smaller than the dataset's ({data_vocab}) "
            f"or the tokenizer's ({tok_vocab}) vocabulary"
        )
    if init_dir is not None:
        check_architecture(init, spec.architecture, vocab)
    t = spec.training
    tokens_per_step = t.global_batch_size * t.sequence_length
    total = t.steps if t.steps is not None else math.ceil((t.tokens or 0) / tokens_per_step)
    return Plan(
        spec=spec,
        dataset_dir=dataset_dir,
        tokenizer_dir=tokenizer_dir,
        output=task.config.output,
        checkpoints=task.config.output.rstrip("/") + CHECKPOINT_SUFFIX,
        producer=task.producer,
        world=world,
        sequence_length=t.sequence_length,
        vocab_size=vocab,
        total_steps=total,
        accumulation=t.global_batch_size // (t.micro_batch_size * world),
        warmup_steps=int(t.warmup_ratio * total),
        log_every=max(1, int(os.environ.get("MODELSMITH_LOG_EVERY", DEFAULT_LOG_EVERY))),
        init_dir=init_dir,
    )
