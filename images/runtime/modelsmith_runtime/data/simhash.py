"""SimHash near-duplicate detection: one 64-bit fingerprint per document.

Charikar's SimHash (2002), as Manku et al. (2007) used it for web pages: every
shingle (the same lowercased word n-grams MinHash uses) votes on each of 64 bits
with one bit of its hash; a fingerprint bit is set where most shingles vote 1. Two
documents' fingerprints then differ in a share of bits that grows with the angle
between their shingle sets, so "near duplicate" means "at most k bits differ".

A shingle's 64 bits are the MurmurHash3 finalizer (fmix64) of its crc32: crc32 is a
C builtin and stable across processes, and fmix64 is a bijection that spreads 32
input bits over all 64, so every bit is a fair vote (crc32 alone is linear, and only
32 bits wide). The votes are counted with numpy, a batch of documents at a time.

Candidates are found by the pigeonhole principle, never by comparing all pairs: cut
the 64 bits into k + 1 blocks; two fingerprints within distance k differ in at most
k blocks, so they agree exactly on at least one. Documents that share a block value
are candidates, each is confirmed on the whole fingerprint, and confirmed pairs join
the same union-find clusters as MinHash's, so the first document of a cluster in
corpus order is kept whoever computed the fingerprints.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from modelsmith_runtime.data.dedup import Clusters, shingles

BITS = 64
WIDTH = 2
"""A fingerprint travels as two uint32 columns, like a (short) MinHash signature."""
CHUNK = 256
"""Documents per numpy pass: their shingle hashes stay in cache (a whole corpus at
once made the vote count three times slower than the shingling)."""

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)


def _fmix64(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    x = x ^ (x >> _SHIFT)
    x = x * _M1
    x = x ^ (x >> _SHIFT)
    x = x * _M2
    return x ^ (x >> _SHIFT)


def fingerprints(texts: Iterable[str], count: int, ngram: int) -> np.ndarray[Any, Any]:
    """``count`` fingerprints as (count, 2) uint32: the low half, then the high half."""
    out = np.zeros((count, WIDTH), dtype=np.uint32)
    batch: list[str] = []
    row = 0
    for text in texts:
        batch.append(text)
        if len(batch) == CHUNK:
            out[row : row + CHUNK] = _fingerprint_batch(batch, ngram)
            row, batch = row + CHUNK, []
    if batch:
        out[row : row + len(batch)] = _fingerprint_batch(batch, ngram)
    return out


def _fingerprint_batch(texts: list[str], ngram: int) -> np.ndarray[Any, Any]:
    lengths = np.empty(len(texts), dtype=np.uint64)
    hashes: list[int] = []
    for row, text in enumerate(texts):
        grams = shingles(text, ngram)  # never empty: a short text is one shingle
        lengths[row] = len(grams)
        hashes.extend(map(zlib.crc32, grams))
    mixed = _fmix64(np.asarray(hashes, dtype=np.uint64))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    value = np.zeros(len(texts), dtype=np.uint64)
    one = np.uint64(1)
    for bit in range(BITS):
        ones = np.add.reduceat((mixed >> np.uint64(bit)) & one, starts)
        value |= (2 * ones > lengths).astype(np.uint64) << np.uint64(bit)
    halves = np.empty((len(texts), WIDTH), dtype=np.uint32)
    halves[:, 0] = (value & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    halves[:, 1] = (value >> np.uint64(32)).astype(np.uint32)
    return halves


def as_uint64(sigs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    halves = np.ascontiguousarray(sigs, dtype=np.uint32).astype(np.uint64)
    return halves[:, 0] | (halves[:, 1] << np.uint64(32))


def blocks(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the k + 1 blocks, as even as 64 bits allow."""
    count = max_distance + 1
    widths = [BITS // count + (1 if i < BITS % count else 0) for i in range(count)]
    offsets = np.concatenate(([0], np.cumsum(widths)[:-1])).tolist()
    return list(zip(offsets, widths, strict=True))


def _candidate_pairs(
    values: np.ndarray[Any, Any], rows: np.ndarray[Any, Any], max_distance: int
) -> Iterator[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """(a, b) arrays of rows that agree on some block: each group of equal values, once
    sorted, is a run, so offset d pairs every member with the one d places on."""
    for shift, width in blocks(max_distance):
        mask = np.uint64((1 << width) - 1)
        keys = (values >> np.uint64(shift)) & mask
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        for d in range(1, len(order)):
            same = ordered[d:] == ordered[:-d]
            if not same.any():
                break
            yield rows[order[:-d][same]], rows[order[d:][same]]


def near_duplicates(
    sigs: np.ndarray[Any, Any], max_distance: int, candidates: np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, Any]:
    """True where a document is in a cluster of near duplicates with an earlier one.

    ``candidates`` (bool per row) limits the search, e.g. to exact-dedup survivors.
    """
    count = len(sigs)
    rows = np.arange(count) if candidates is None else np.flatnonzero(candidates)
    values = as_uint64(sigs)[rows]
    clusters = Clusters(count)
    everything = as_uint64(sigs)
    for a, b in _candidate_pairs(values, rows, max_distance):
        close = np.bitwise_count(everything[a] ^ everything[b]) <= max_distance
        for i, j in zip(a[close].tolist(), b[close].tolist(), strict=True):
            clusters.union(i, j)
    duplicate = np.zeros(count, dtype=bool)
    for i in rows.tolist():
        duplicate[i] = clusters.find(i) != i
    return duplicate
