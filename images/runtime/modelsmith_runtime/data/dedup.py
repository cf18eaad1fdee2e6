"""Exact and near-duplicate detection, split the way the workers and the reduce need it.

Workers compute what is per document and expensive (``exact_key``, ``signatures``);
the reduce step, which sees every worker's part, decides what is a duplicate
(``exact_duplicates``, ``near_duplicates``). Both decisions keep the first document in
corpus order and throw the rest away, so the kept set does not depend on how many
workers there were or which worker saw what.

Near duplicates are found as datatrove and the Gopher/RefinedWeb pipelines do: a
MinHash over the set of word n-gram shingles (lowercased words, so case and
punctuation edits do not hide a copy), MinHashLSH banding to find candidate pairs,
then the MinHash estimate of the Jaccard similarity to confirm a candidate
(banding alone lets through pairs well under the threshold). Because every candidate
is confirmed, the banding is tuned for recall (``LSH_WEIGHTS``): with datasketch's
even default, a pair at threshold 0.8 + 0.05 is found only 69% of the time; with
these weights 97%, at the price of more candidates to confirm. Confirmed pairs are
joined into clusters with union-find, so a chain of edits (A~B, B~C) is one cluster.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

SEED = 1
"""Every worker must draw the same permutations, or signatures do not compare."""
SCHEME = "affine32"
"""datasketch's 32-bit scheme, which its LSH index reads the signatures as."""
SIGNATURE_BATCH = 4096
"""Texts whose shingle sets are held at once while rensa signs them."""

LSH_WEIGHTS = (0.1, 0.9)
"""MinHashLSH's (false positive, false negative) weights when it picks bands x rows."""

_WORD = re.compile(r"\w+")


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def shingles(text: str, ngram: int) -> set[bytes]:
    """Word n-grams of the lowercased text; a text shorter than n is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


def signatures(texts: Iterable[str], count: int, num_perm: int, ngram: int) -> np.ndarray[Any, Any]:
    """MinHash signatures, one row per text: ``count`` rows of ``num_perm`` uint32.

    rensa's R-MinHash (Rust): with it the dedup stage (shingles, signatures, LSH,
    confirmation) handled 1.17-1.23x the documents per core that datasketch's
    signatures gave, at the same precision and recall (bench/data_pipeline.py:
    1.000 / 0.999 against 1.000 / 0.998), and its signatures are the same in every
    process for one seed, which the workers' parts need. Its values are 32-bit.
    """
    from rensa import RMinHash

    out = np.empty((count, num_perm), dtype=np.uint32)
    batch: list[list[bytes]] = []
    row = 0

    def sign() -> None:
        nonlocal row
        matrix = RMinHash.digest_matrix_from_token_byte_sets(batch, num_perm, SEED)
        out[row : row + len(batch)] = np.asarray(matrix.to_rows(), dtype=np.uint32)
        row += len(batch)
        batch.clear()

    for text in texts:
        batch.append(list(shingles(text, ngram)))
        if len(batch) == SIGNATURE_BATCH:
            sign()
    if batch:
        sign()
    return out


def exact_duplicates(keys: Sequence[bytes]) -> np.ndarray[Any, Any]:
    """True where a text is identical to an earlier one."""
    seen: set[bytes] = set()
    duplicate = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        if key in seen:
            duplicate[i] = True
        else:
            seen.add(key)
    return duplicate


class Clusters:
    """Union-find whose root is always the smallest (earliest) member."""

    def __init__(self, size: int) -> None:
        self.parent = np.arange(size)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicates(
    sigs: np.ndarray[Any, Any], threshold: float, candidates: np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, Any]:
    """True where a document is in a cluster of near duplicates with an earlier one.

    ``candidates`` (bool per row) limits the search, e.g. to exact-dedup survivors.
    """
    from datasketch import LeanMinHash, MinHashLSH

    count, num_perm = sigs.shape
    rows = np.arange(count) if candidates is None else np.flatnonzero(candidates)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    clusters = Clusters(count)
    for i in rows.tolist():
        sketch = LeanMinHash(seed=SEED, hashvalues=sigs[i], scheme=SCHEME)
        found = lsh.query(sketch)
        if found:
            others = np.asarray(found, dtype=np.int64)
            similarity = (sigs[others] == sigs[i]).mean(axis=1)
            for j in others[similarity >= threshold].tolist():
                clusters.union(i, j)
        lsh.insert(i, sketch, check_duplication=False)
    duplicate = np.zeros(count, dtype=bool)
    for i in rows.tolist():
        duplicate[i] = clusters.find(i) != i
    return duplicate
