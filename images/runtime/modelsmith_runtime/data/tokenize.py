"""The tokenizer (a freshly trained byte-level BPE, or an existing one) and packing.

A trained tokenizer is GPT-2's recipe with HF tokenizers: byte-level pre-tokenization
with the full byte alphabet seeded, so any text encodes without an unknown token, and
two special tokens, ``<|endoftext|>`` (separates documents; also bos/unk, as GPT-2)
and ``<|pad|>`` (fine-tuning batches need one). It is saved in the Hugging Face
layout, ``tokenizer.json`` plus ``tokenizer_config.json`` and
``special_tokens_map.json``, which transformers' AutoTokenizer loads as a fast
tokenizer, so the trainer, vLLM and KServe read it as they are.

An existing tokenizer's files are copied as they are; its end-of-text token is the
``eos_token`` of its tokenizer_config.json, else a well-known name in its vocabulary.

Packing follows nanoGPT and Megatron: every document's tokens plus the end-of-text
token go into a stream, cut into rows of ``sequence_length`` (a document may span
two rows); the tail shorter than a row is dropped and counted in the report. There is
one stream per source, so every row comes from one source and carries its id (the
trainer's loss-driven mixture samples by it); a source's tail is dropped the same
way. Rows leave in corpus order, a batch of documents at a time, so one source packs
exactly as a single stream does and the output does not depend on the engine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from modelsmith.api.datapipeline import TrainTokenizer
from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.shards import ShardWriter

EOS = "<|endoftext|>"
PAD = "<|pad|>"
KNOWN_EOS = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")
TOKENIZER_FILE = "tokenizer.json"
_ENCODE_BATCH = 512


@dataclass(frozen=True)
class TokenizerInfo:
    tokenizer: Tokenizer
    eos_token: str
    eos_id: int
    source: Path | None
    """Where an existing tokenizer's files are; None for a trained one."""

    @property
    def trained(self) -> bool:
        return self.source is None

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))


def train(texts: Iterable[str], count: int, spec: TrainTokenizer) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=spec.min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=count)
    return tokenizer


def save_trained(tokenizer: Tokenizer, target: Path, max_length: int) -> TokenizerInfo:
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(target / TOKENIZER_FILE))
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (target / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    eos_id = tokenizer.token_to_id(EOS)
    if eos_id is None:  # cannot happen: the trainer adds special tokens first
        raise RuntimeError(f"trained tokenizer lacks {EOS}")
    return TokenizerInfo(tokenizer, EOS, eos_id, source=None)


def _tokenizer_dir(root: Path) -> Path:
    """The artifact itself, or the tokenizer/ inside a dataset artifact (a DataPipeline's)."""
    for candidate in (root, root / "tokenizer"):
        if (candidate / TOKENIZER_FILE).is_file():
            return candidate
    raise BadInputError("InvalidTokenizer", f"{root} holds no {TOKENIZER_FILE}")


def _configured_eos(source: Path) -> str | None:
    try:
        config = json.loads((source / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    eos = config.get("eos_token") if isinstance(config, dict) else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def load_existing(root: Path) -> TokenizerInfo:
    """The tokenizer of a published artifact, checked before any document is read."""
    source = _tokenizer_dir(root)
    try:
        tokenizer = Tokenizer.from_file(str(source / TOKENIZER_FILE))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise BadInputError("InvalidTokenizer", f"{source / TOKENIZER_FILE}: {exc}") from exc
    configured = _configured_eos(source)
    for name in ([configured] if configured else []) + list(KNOWN_EOS):
        eos_id = tokenizer.token_to_id(name)
        if eos_id is not None:
            break
    else:
        raise BadInputError(
            "InvalidTokenizer",
            f"{source}: no end-of-text token (eos_token in tokenizer_config.json, or one of "
            f"{', '.join(KNOWN_EOS)})",
        )
    return TokenizerInfo(tokenizer, name, eos_id, source=source)


def save_existing(info: TokenizerInfo, target: Path) -> None:
    """Copy an existing tokenizer's files as they are (the dataset must carry its own)."""
    if info.source is None:
        raise ValueError("not an existing tokenizer")
    target.mkdir(parents=True, exist_ok=True)
    for path in info.source.iterdir():
        if path.is_file() and path.name != COMPLETION_MARKER:
            shutil.copy2(path, target / path.name)


@dataclass(frozen=True)
class Packed:
    documents: int
    tokens: int
    """Document tokens plus one end-of-text token each."""
    dropped: int
    """Tokens of the last, partial sequence, which is not written."""


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pack(
    info: TokenizerInfo,
    texts: Iterable[str],
    writer: ShardWriter,
    tokenized: Callable[[int], None] | None = None,
    sources: Iterable[int] | None = None,
) -> Packed:
    """Tokenize and pack ``texts``; ``tokenized`` hears each batch's token count.

    ``sources`` runs beside ``texts`` (each document's source index); None: one source.
    """
    length = writer.sequence_length
    tags = iter(sources) if sources is not None else None
    carries: dict[int, list[int]] = {}
    documents = tokens = 0
    for batch in _batches(texts, _ENCODE_BATCH):
        added = 0
        grown: set[int] = set()
        for encoding in info.tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            source = next(tags) if tags is not None else 0
            stream = carries.setdefault(source, [])
            stream.extend(encoding.ids)
            stream.append(info.eos_id)
            added += len(encoding.ids) + 1
            grown.add(source)
        documents += len(batch)
        tokens += added
        if tokenized is not None:
            tokenized(added)
        for source in sorted(grown):
            stream = carries[source]
            rows = len(stream) // length
            array: np.ndarray[Any, Any] = np.asarray(stream[: rows * length], dtype=np.int64)
            for row in array.reshape(rows, length):
                writer.add(row, source)
            carries[source] = stream[rows * length :]
    return Packed(documents, tokens, sum(len(carry) for carry in carries.values()))
