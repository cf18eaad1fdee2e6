"""Which sequences each rank trains on, as a pure function of one stream position.

The dataset's packed token stream is cut into windows of the run's sequence length
(exactly the dataset's rows when the two lengths agree, so a dataset packed for 2048
also trains a 512-token model). Windows are visited epoch by epoch, in a permutation
seeded by (seed, epoch); an optimizer step consumes the global batch at stream
positions [p, p + globalBatchSize) and rank r takes its own contiguous slice of it.
The position p is then the whole data state: it goes into every checkpoint, and a
resumed run, even one with another world size, sees exactly the sequences an
uninterrupted run would have seen.

The permutation is held in memory (8 bytes per window, like Megatron's shuffle index):
about 4 GB per rank for a trillion tokens at 2048, which a pretraining node affords.

With a loss-driven mixture (`MixtureBatches`) each source's windows have their own
seeded order and stream position, and every step splits the global batch among the
sources by a multinomial draw seeded by (seed, step) over the weights in force; the
data state is then the per-source positions, and a run is reproducible from the seed
and the weight history. A window that would straddle two sources' rows is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelsmith.api.pretrain import Training
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.shards import PackedDataset


@dataclass(frozen=True)
class TokenWindows:
    """Fixed-length windows over the shards' flat token arrays, without copying them."""

    shards: tuple[np.ndarray[Any, Any], ...]
    starts: np.ndarray[Any, Any]
    """starts[i]: the first window of shard i; starts[-1]: the number of windows."""
    length: int

    @classmethod
    def open(cls, dataset: PackedDataset, length: int) -> TokenWindows:
        flat = tuple(array.reshape(-1) for array in dataset.arrays)
        counts = [len(array) // length for array in flat]
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if starts[-1] == 0:
            raise BadInputError(
                "DatasetTooSmall",
                f"{dataset.root}: no shard holds {length} tokens (training.sequenceLength)",
            )
        return cls(flat, starts, length)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def gather(self, windows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The token windows at these indices, as an int64 (n, length) array."""
        out = np.empty((len(windows), self.length), dtype=np.int64)
        shard_of = np.searchsorted(self.starts, windows, side="right") - 1
        for row, (window, shard) in enumerate(zip(windows, shard_of, strict=True)):
            offset = int(window - self.starts[shard]) * self.length
            out[row] = self.shards[shard][offset : offset + self.length]
        return out


@dataclass
class SequenceOrder:
    """The seeded visiting order of windows, epoch after epoch."""

    windows: int
    seed: int
    stream: tuple[int, ...] = ()
    """Extra seed words: one independent order per source of a mixture."""
    _cache: dict[int, np.ndarray[Any, Any]] = field(default_factory=dict)

    def _epoch(self, epoch: int) -> np.ndarray[Any, Any]:
        if epoch not in self._cache:
            self._cache.clear()
            rng = np.random.default_rng([self.seed, epoch, *self.stream])
            self._cache[epoch] = rng.permutation(self.windows)
        return self._cache[epoch]

    def take(self, position: int, count: int) -> np.ndarray[Any, Any]:
        """Window indices at stream positions [position, position + count)."""
        parts = []
        while count > 0:
            epoch, offset = divmod(position, self.windows)
            part = self._epoch(epoch)[offset : offset + count]
            parts.append(part)
            position += len(part)
            count -= len(part)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Batches:
    """One rank's micro-batches for the optimizer step that starts at a stream position."""

    windows: TokenWindows
    order: SequenceOrder
    global_batch: int
    micro_batch: int
    rank: int
    world: int

    @classmethod
    def for_rank(
        cls,
        dataset: Path,
        sequence_length: int,
        training: Training,
        rank: int,
        world: int,
    ) -> Batches:
        """This rank's batches of a dataset artifact, in the run's seeded order."""
        windows = TokenWindows.open(PackedDataset.open(dataset), sequence_length)
        order = SequenceOrder(len(windows), training.seed)
        return cls(
            windows, order, training.global_batch_size, training.micro_batch_size, rank, world
        )

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world

    def step(self, position: int) -> list[np.ndarray[Any, Any]]:
        """Micro-batches of token windows; the step consumes ``global_batch`` positions."""
        start = position + self.rank * self.per_rank
        mine = self.windows.gather(self.order.take(start, self.per_rank))
        return [mine[i : i + self.micro_batch] for i in range(0, len(mine), self.micro_batch)]


MIXTURE_STREAM = 0x6D6978
"""Seed word that keeps the mixture's draws apart from the static order's."""


def window_sources(dataset: PackedDataset, windows: TokenWindows) -> np.ndarray[Any, Any]:
    """The source of every window (-1: it straddles rows of two sources)."""
    rows, length = dataset.sequence_length, windows.length
    out = []
    for shard in range(len(windows.shards)):
        tags = dataset.source_ids(shard).astype(np.int32)
        count = int(windows.starts[shard + 1] - windows.starts[shard])
        begin = np.arange(count, dtype=np.int64) * length
        source = tags[begin // rows]
        changes = (np.flatnonzero(tags[1:] != tags[:-1]) + 1) * rows
        inside = np.searchsorted(changes, begin + length, "left") - np.searchsorted(
            changes, begin, "right"
        )
        out.append(np.where(inside > 0, -1, source))
    return np.concatenate(out)


@dataclass(frozen=True)
class MixtureBatches:
    """One rank's micro-batches, and each sequence's source, under per-source weights."""

    windows: TokenWindows
    names: tuple[str, ...]
    members: tuple[np.ndarray[Any, Any], ...]
    """members[s]: the windows of source s."""
    orders: tuple[SequenceOrder, ...]
    seed: int
    global_batch: int
    micro_batch: int
    rank: int
    world: int

    @classmethod
    def for_rank(
        cls, dataset: Path, sequence_length: int, training: Training, rank: int, world: int
    ) -> MixtureBatches:
        packed = PackedDataset.open(dataset)
        windows = TokenWindows.open(packed, sequence_length)
        of = window_sources(packed, windows)
        members = tuple(np.flatnonzero(of == s) for s in range(len(packed.sources)))
        orders = tuple(
            SequenceOrder(len(m), training.seed, (MIXTURE_STREAM, s)) for s, m in enumerate(members)
        )
        return cls(
            windows,
            tuple(packed.sources),
            members,
            orders,
            training.seed,
            training.global_batch_size,
            training.micro_batch_size,
            rank,
            world,
        )

    @property
    def sizes(self) -> list[int]:
        return [len(m) for m in self.members]

    def allocate(self, step: int, weights: Sequence[float]) -> np.ndarray[Any, Any]:
        """Sequences per source in step ``step``'s global batch: a source's chance is its
        weight times its share of the windows."""
        mass = np.asarray(weights, dtype=np.float64) * np.asarray(self.sizes, dtype=np.float64)
        rng = np.random.default_rng([self.seed, step, MIXTURE_STREAM])
        return rng.multinomial(self.global_batch, mass / mass.sum())

    def step(
        self, step: int, weights: Sequence[float], positions: Sequence[int]
    ) -> tuple[list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]], list[int]]:
        """This rank's (tokens, sources) micro-batches of step ``step`` (0-based), and
        the per-source positions after it. Every rank draws the whole global batch (a
        few integers) so the ranks agree on it, then reads only its own slice."""
        counts = self.allocate(step, weights)
        chosen, tags, after = [], [], list(positions)
        for source, count in enumerate(counts.tolist()):
            if count:
                picked = self.orders[source].take(after[source], count)
                chosen.append(self.members[source][picked])
                tags.append(np.full(count, source, dtype=np.int64))
                after[source] += count
        shuffle = np.random.default_rng([self.seed, step, MIXTURE_STREAM, 1]).permutation(
            self.global_batch
        )
        windows, sources = np.concatenate(chosen)[shuffle], np.concatenate(tags)[shuffle]
        per_rank = self.global_batch // self.world
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        tokens, sources = self.windows.gather(windows[mine]), sources[mine]
        micro = [
            (tokens[i : i + self.micro_batch], sources[i : i + self.micro_batch])
            for i in range(0, per_rank, self.micro_batch)
        ]
        return micro, after
