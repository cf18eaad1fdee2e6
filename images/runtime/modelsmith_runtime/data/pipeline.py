"""The map half (every worker, over its slice) and the reduce half (worker 0, over all).

The map half does everything that needs one document at a time and is worth
spreading: normalize, filter, domain, perplexity, exact hash, MinHash signature or
SimHash fingerprint. The reduce
half does what needs every document at once: exact and near dedup across all the
workers' slices, and the mixture. Everything the reduce decides depends on corpus
order only, never on which worker saw a document, so 1 worker and N workers keep the
same documents and write the same shards. The Ray engine reuses the pieces (`Cleaner`,
`drop_perplexity`, `reduce_parts`) rather than `process_slice` itself, and for the
same reason keeps the same documents too.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelsmith.api.datapipeline import DataPipelineSpec, Dedup, NearDedupMethod
from modelsmith_runtime.data import dedup, simhash
from modelsmith_runtime.data.dedup import exact_duplicates, exact_key
from modelsmith_runtime.data.filters import QualityFilters
from modelsmith_runtime.data.normalize import normalize
from modelsmith_runtime.data.parts import Part, concat
from modelsmith_runtime.data.quality import DomainScorer
from modelsmith_runtime.data.readers import Scanned, SourceFiles, read_documents
from modelsmith_runtime.data.stats import Reason, Stats

log = logging.getLogger(__name__)

MIXTURE_SEED = 0
"""Fixed, so a rerun (or a run with another worker count) writes the same shards."""


def _drop(part: Part, keep: np.ndarray[Any, Any]) -> Part:
    idx = np.flatnonzero(keep).tolist()
    return Part(
        keys=part.keys[keep],
        texts=[part.texts[i] for i in idx],
        sizes=part.sizes[keep],
        hashes=[part.hashes[i] for i in idx],
        signatures=part.signatures[keep] if part.signatures is not None else None,
        stats=part.stats,
    )


def signature_width(spec: Dedup) -> int | None:
    """uint32 columns per document of the near-dedup signature; None when there is none."""
    if spec.near is NearDedupMethod.MINHASH:
        return spec.num_permutations
    if spec.near is NearDedupMethod.SIMHASH:
        return simhash.WIDTH
    return None


def sign(texts: list[str], spec: Dedup) -> np.ndarray[Any, Any] | None:
    """The near-dedup signatures of ``texts``: what a worker computes for the reduce."""
    if spec.near is NearDedupMethod.MINHASH:
        return dedup.signatures(texts, len(texts), spec.num_permutations, spec.ngram)
    if spec.near is NearDedupMethod.SIMHASH:
        return simhash.fingerprints(texts, len(texts), spec.ngram)
    return None


def near_duplicates(
    sigs: np.ndarray[Any, Any], spec: Dedup, candidates: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    if spec.near is NearDedupMethod.SIMHASH:
        return simhash.near_duplicates(sigs, spec.max_hamming_distance, candidates)
    return dedup.near_duplicates(sigs, spec.jaccard_threshold, candidates)


class Cleaner:
    """Normalize, then the cheap filters: what every document goes through, in both engines."""

    def __init__(self, spec: DataPipelineSpec) -> None:
        self.normalize_spec = spec.normalize
        self.filters = QualityFilters(spec.filters)

    def clean(self, text: str) -> tuple[str, Reason | None]:
        """The normalized text, and the first filter reason to drop it (None: keep)."""
        text = normalize(text, self.normalize_spec)
        return text, self.filters.check(text)


def drop_off_domain(part: Part, spec: DataPipelineSpec, scorer: DomainScorer | None) -> Part:
    """The part without the documents too unlike the reference corpus."""
    domain = spec.filters.domain
    if domain is None or scorer is None or not part.texts:
        return part
    low = scorer.scores(part.texts) < domain.min_similarity
    part.stats.remove(Reason.DOMAIN, int(part.sizes[low].sum()), int(low.sum()))
    return _drop(part, ~low)


def drop_perplexity(part: Part, spec: DataPipelineSpec, reference_model: Path | None) -> Part:
    """The part without the documents the reference model finds too implausible."""
    perplexity = spec.filters.perplexity
    if perplexity is None or reference_model is None or not part.texts:
        return part
    from modelsmith_runtime.data.perplexity import PerplexityScorer

    scores = np.asarray(PerplexityScorer(reference_model).score(part.texts))
    high = scores > perplexity.max_perplexity
    part.stats.remove(Reason.PERPLEXITY, int(part.sizes[high].sum()), int(high.sum()))
    return _drop(part, ~high)


def process_slice(
    spec: DataPipelineSpec,
    sources: list[SourceFiles],
    worker: int,
    workers: int,
    reference_model: Path | None = None,
    *,
    domain: DomainScorer | None = None,
    stats: Stats | None = None,
    scanned: Scanned | None = None,
) -> Part:
    """Read, normalize, filter and sign this worker's share of the corpus.

    ``stats`` is filled as documents go by, so metrics can watch it; ``scanned`` hears
    how many input bytes the reader got through.

    Later copies of a text this worker has already seen are dropped here as exact
    duplicates: the reduce would drop them anyway (it keeps the first copy in corpus
    order, and this worker reads in corpus order), and they need no signature.
    """
    stats = Stats() if stats is None else stats
    cleaner = Cleaner(spec)
    keys: list[tuple[int, int, int]] = []
    texts: list[str] = []
    sizes: list[int] = []
    for doc in read_documents(sources, worker, workers, stats, scanned):
        text, reason = cleaner.clean(doc.text)
        if reason is not None:
            stats.remove(reason, doc.size)
            continue
        keys.append((doc.source, doc.file, doc.position))
        texts.append(text)
        sizes.append(doc.size)
    part = Part(
        keys=np.asarray(keys, dtype=np.int64).reshape(-1, 3),
        texts=texts,
        sizes=np.asarray(sizes, dtype=np.int64),
        hashes=[exact_key(text) for text in texts],
        signatures=None,
        stats=stats,
    )
    log.info("worker %d: %d documents read, %d pass", worker, stats.read.documents, len(texts))
    part = drop_perplexity(drop_off_domain(part, spec, domain), spec, reference_model)
    if spec.dedup.exact:
        repeated = exact_duplicates(part.hashes)
        stats.remove(Reason.EXACT_DUPLICATE, int(part.sizes[repeated].sum()), int(repeated.sum()))
        part = _drop(part, ~repeated)
    part.signatures = sign(part.texts, spec.dedup)
    return part


@dataclass(frozen=True)
class Reduced:
    """The deduplicated corpus, in corpus order, and the run's whole ledger."""

    part: Part
    stats: Stats
    dedup: Stats = field(default_factory=Stats)
    """The removals the reduce itself made: with the map's ledger, what this process did."""

    @property
    def documents(self) -> int:
        return len(self.part.texts)


def reduce_parts(parts: list[Part], spec: DataPipelineSpec) -> Reduced:
    merged = concat(parts)
    dedup = Stats()
    keep = np.ones(len(merged.texts), dtype=bool)
    if spec.dedup.exact:
        exact = exact_duplicates(merged.hashes)
        dedup.remove(Reason.EXACT_DUPLICATE, int(merged.sizes[exact].sum()), int(exact.sum()))
        keep &= ~exact
    if spec.dedup.near is not NearDedupMethod.NONE and merged.signatures is not None:
        near = near_duplicates(merged.signatures, spec.dedup, candidates=keep)
        dedup.remove(Reason.NEAR_DUPLICATE, int(merged.sizes[near].sum()), int(near.sum()))
        keep &= ~near
    merged.stats.merge(dedup)
    return Reduced(_drop(merged, keep), merged.stats, dedup)


def duplicate_rate(stats: Stats, kept: int) -> float:
    """Duplicates removed over the documents that reached dedup (passed every filter)."""
    duplicates = stats.removed_documents(Reason.EXACT_DUPLICATE) + stats.removed_documents(
        Reason.NEAR_DUPLICATE
    )
    reached = kept + duplicates
    return duplicates / reached if reached else 0.0


def _unit_interval(key: bytes) -> float:
    digest = hashlib.blake2b(key, digest_size=8, person=b"mixture").digest()
    return int.from_bytes(digest, "little") / 2**64


def mixture(reduced: Reduced, spec: DataPipelineSpec) -> list[int]:
    """Indices into the deduplicated corpus, in training order, with repeats.

    A source's weight scales how many times each of its documents is used: weight 2
    uses every document twice, 0.5 a deterministic half (chosen by a hash of the
    text), 1.5 every document once and half of them twice. So sources contribute in
    proportion to weight x size, and a weight needs no knowledge of the other
    sources' sizes. The order is then shuffled with a fixed seed, so sources and
    repeats are spread through the shards.
    """
    weights = [source.weight for source in spec.sources]
    chosen: list[int] = []
    for i, (source, text_hash) in enumerate(
        zip(reduced.part.keys[:, 0].tolist(), reduced.part.hashes, strict=True)
    ):
        weight = weights[source]
        copies = int(weight)
        if weight - copies > 0 and _unit_interval(text_hash) < weight - copies:
            copies += 1
        chosen.extend([i] * copies)
    order = np.random.default_rng(MIXTURE_SEED).permutation(len(chosen))
    return [chosen[i] for i in order.tolist()]
