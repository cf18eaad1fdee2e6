"""The tokenized dataset format: what DataPipeline writes and the trainers read.

A dataset artifact is a directory:

    index.json            format version, dtype, sequence length, shards, token counts
    shards/00000.bin      packed sequences, row-major: sequences x sequence_length tokens
    tokenizer/            the tokenizer in the Hugging Face layout (tokenizer.json …)
    report.json           what the pipeline did (documents in/out, removed by filter…)

Shards are flat little-endian integer arrays (uint16 when the vocabulary fits, else
uint32) that `numpy.memmap` opens without parsing, like nanoGPT's and Megatron's
.bin files; every sequence is exactly `sequence_length` tokens, so sequence i of a
shard starts at byte i * sequence_length * itemsize.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelsmith_runtime.errors import BadInputError

FORMAT = "modelsmith.packed/v1"
INDEX = "index.json"
SHARDS = "shards"
TOKENIZER = "tokenizer"
REPORT = "report.json"


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class ShardWriter:
    """Append packed sequences; roll to a new shard file at ``shard_bytes``."""

    def __init__(self, root: Path, sequence_length: int, vocab_size: int, shard_bytes: int):
        self.root = root
        self.sequence_length = sequence_length
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        row_bytes = sequence_length * self.dtype.itemsize
        self.rows_per_shard = max(1, shard_bytes // row_bytes)
        self.shards: list[dict[str, Any]] = []
        self._rows: list[np.ndarray[Any, Any]] = []
        (root / SHARDS).mkdir(parents=True, exist_ok=True)

    def add(self, sequence: np.ndarray[Any, Any]) -> None:
        if sequence.shape != (self.sequence_length,):
            raise ValueError(f"sequence of shape {sequence.shape}, want {self.sequence_length}")
        self._rows.append(sequence.astype(self.dtype, copy=False))
        if len(self._rows) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"{SHARDS}/{len(self.shards):05d}.bin"
        np.stack(self._rows).tofile(self.root / name)
        self.shards.append({"file": name, "sequences": len(self._rows)})
        self._rows = []

    def close(self, **extra: Any) -> dict[str, Any]:
        """Write index.json; returns it."""
        self._flush()
        sequences = sum(s["sequences"] for s in self.shards)
        index = {
            "format": FORMAT,
            "dtype": self.dtype.str,
            "sequenceLength": self.sequence_length,
            "vocabSize": self.vocab_size,
            "sequences": sequences,
            "tokens": sequences * self.sequence_length,
            "shards": self.shards,
            **extra,
        }
        (self.root / INDEX).write_text(json.dumps(index, indent=2))
        return index


@dataclass(frozen=True)
class PackedDataset:
    """Random access to the packed sequences of a dataset artifact."""

    root: Path
    index: dict[str, Any]
    arrays: tuple[np.ndarray[Any, Any], ...]

    @classmethod
    def open(cls, root: Path) -> PackedDataset:
        try:
            index = json.loads((root / INDEX).read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError("InvalidDataset", f"{root}/{INDEX}: {exc}") from exc
        if index.get("format") != FORMAT:
            raise BadInputError("InvalidDataset", f"{root}: format {index.get('format')!r}")
        seq = int(index["sequenceLength"])
        arrays = []
        for shard in index["shards"]:
            path = root / shard["file"]
            data = np.memmap(path, dtype=np.dtype(index["dtype"]), mode="r")
            if data.size != shard["sequences"] * seq:
                raise BadInputError(
                    "InvalidDataset", f"{path}: {data.size} tokens, index disagrees"
                )
            arrays.append(data.reshape(shard["sequences"], seq))
        if not arrays:
            raise BadInputError("EmptyDataset", f"{root} holds no sequences")
        return cls(root, index, tuple(arrays))

    @property
    def sequence_length(self) -> int:
        return int(self.index["sequenceLength"])

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocabSize"])

    def __len__(self) -> int:
        return int(self.index["sequences"])

    def __getitem__(self, i: int) -> np.ndarray[Any, Any]:
        for array in self.arrays:
            if i < len(array):
                return np.asarray(array[i])
            i -= len(array)
        raise IndexError(i)
