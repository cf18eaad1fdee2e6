"""The tokenized dataset format: what DataPipeline writes and the trainers read.

A dataset artifact is a directory:

    index.json            format version, dtype, sequence length, shards, token counts,
                          the source names
    shards/00000.bin      packed sequences, row-major: sequences x sequence_length tokens
    shards/00000.src      the source of each sequence: uint16, one per sequence
    tokenizer/            the tokenizer in the Hugging Face layout (tokenizer.json …)
    report.json           what the pipeline did (documents in/out, removed by filter…)

Shards are flat little-endian integer arrays (uint16 when the vocabulary fits, else
uint32) that `numpy.memmap` opens without parsing, like nanoGPT's and Megatron's
.bin files; every sequence is exactly `sequence_length` tokens, so sequence i of a
shard starts at byte i * sequence_length * itemsize.

Every sequence comes from one source (the packer keeps one stream per source), and
``sources`` in index.json names them in the spec's order; a shard's ``sourceFile``
holds each sequence's index into that list, which the trainer's loss-driven mixture
samples by. A dataset written before sources were recorded has neither: readers take
it as one source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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
SOURCE_DTYPE = np.dtype("<u2")
ONE_SOURCE = "all"
"""The name of the one source of a dataset that records none."""


def source_names(uris: Sequence[str]) -> list[str]:
    """Short, unique, metric-safe names for the sources, from the last part of each URI
    ("s3://b/corpora/wiki/" -> "wiki", "file:///d/code.jsonl.gz" -> "code")."""
    names: list[str] = []
    for i, uri in enumerate(uris):
        tail = uri.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
        name = re.sub(r"[^a-z0-9_]+", "_", tail.lower()).strip("_") or f"source{i}"
        if name[0].isdigit():
            name = f"s{name}"
        unique, n = name, 2
        while unique in names:
            unique, n = f"{name}_{n}", n + 1
        names.append(unique)
    return names


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class ShardWriter:
    """Append packed sequences; roll to a new shard file at ``shard_bytes``."""

    def __init__(
        self,
        root: Path,
        sequence_length: int,
        vocab_size: int,
        shard_bytes: int,
        sources: Sequence[str] | None = None,
    ):
        """``sources``: the source names, recorded with each sequence's source; None
        writes the format of before (one implied source)."""
        if sources is not None and not 0 < len(sources) <= 1 << 16:
            raise ValueError(f"{len(sources)} sources, want 1 to 65536")
        self.root = root
        self.sources = list(sources) if sources is not None else None
        self.sequence_length = sequence_length
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        row_bytes = sequence_length * self.dtype.itemsize
        self.rows_per_shard = max(1, shard_bytes // row_bytes)
        self.shards: list[dict[str, Any]] = []
        self._rows: list[np.ndarray[Any, Any]] = []
        self._tags: list[int] = []
        self._per_source = [0] * len(self.sources or ())
        (root / SHARDS).mkdir(parents=True, exist_ok=True)

    def add(self, sequence: np.ndarray[Any, Any], source: int = 0) -> None:
        if sequence.shape != (self.sequence_length,):
            raise ValueError(f"sequence of shape {sequence.shape}, want {self.sequence_length}")
        if self.sources is not None:
            self._tags.append(source)
            self._per_source[source] += 1
        elif source:
            raise ValueError("a writer without source names takes source 0 only")
        self._rows.append(sequence.astype(self.dtype, copy=False))
        if len(self._rows) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"{SHARDS}/{len(self.shards):05d}.bin"
        np.stack(self._rows).tofile(self.root / name)
        shard: dict[str, Any] = {"file": name, "sequences": len(self._rows)}
        if self.sources is not None:
            shard["sourceFile"] = name.removesuffix(".bin") + ".src"
            np.asarray(self._tags, dtype=SOURCE_DTYPE).tofile(self.root / shard["sourceFile"])
        self.shards.append(shard)
        self._rows, self._tags = [], []

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
        if self.sources is not None:
            index["sources"] = self.sources
            index["sourceSequences"] = self._per_source
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
            if "sourceFile" in shard and "sources" not in index:
                raise BadInputError("InvalidDataset", f"{root}/{INDEX}: sourceFile without sources")
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

    @property
    def sources(self) -> list[str]:
        """The source names; one implied source for a dataset that records none."""
        names = self.index.get("sources")
        return [str(n) for n in names] if names else [ONE_SOURCE]

    def source_ids(self, shard: int) -> np.ndarray[Any, Any]:
        """The source of each sequence of shard ``shard``, as indices into `sources`."""
        entry = self.index["shards"][shard]
        count = int(entry["sequences"])
        if "sourceFile" not in entry:
            return np.zeros(count, dtype=SOURCE_DTYPE)
        path = self.root / entry["sourceFile"]
        try:
            ids = np.fromfile(path, dtype=SOURCE_DTYPE)
        except OSError as exc:
            raise BadInputError("InvalidDataset", f"{path}: {exc}") from exc
        if ids.size != count or (count and int(ids.max()) >= len(self.sources)):
            raise BadInputError("InvalidDataset", f"{path}: source ids disagree with the index")
        return ids

    def __getitem__(self, i: int) -> np.ndarray[Any, Any]:
        for array in self.arrays:
            if i < len(array):
                return np.asarray(array[i])
            i -= len(array)
        raise IndexError(i)
