"""Quality filters: length, Gopher repetition, regex blocklist, character entropy.

The filters that need a fitted model run later, over a worker's survivors: the
domain similarity (`quality.DomainScorer`) and the perplexity (`perplexity`).

They run in the spec's order and the first that fires names the reason, so each
removed document is counted once. The repetition measures are the Gopher ones
(MassiveText, Rae et al. 2021, table A1), as datatrove implements them: the share of
lines that repeat an earlier line, and the share of word characters covered by the
most frequent word 2-gram. An n-gram that occurs once is not repetition, so a short
document made of distinct words is never dropped by the second measure.
"""

from __future__ import annotations

import re
from collections import Counter

from modelsmith.api.datapipeline import Filters
from modelsmith_runtime.data.quality import char_entropy
from modelsmith_runtime.data.stats import Reason
from modelsmith_runtime.errors import BadInputError

TOP_NGRAM = 2
"""The spec's maxTopNgramFraction is Gopher's 2-gram threshold."""


def duplicate_line_fraction(text: str) -> float:
    """Share of the non-blank lines that repeat an earlier line."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def top_ngram_fraction(text: str, n: int = TOP_NGRAM) -> float:
    """Share of word characters covered by every occurrence of the most frequent n-gram."""
    words = text.split()
    if len(words) < n:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(word) for word in words)
    return count * sum(len(word) for word in gram) / total


class QualityFilters:
    """The cheap, per-document filters of a spec, compiled once per worker."""

    def __init__(self, spec: Filters) -> None:
        self.spec = spec
        self.blocklist: list[re.Pattern[str]] = []
        for i, pattern in enumerate(spec.blocklist):
            try:
                self.blocklist.append(re.compile(pattern))
            except re.error as exc:
                raise BadInputError(
                    "InvalidSpec", f"filters.blocklist[{i}] {pattern!r} is not a regex: {exc}"
                ) from exc

    def check(self, text: str) -> Reason | None:
        """The first reason to drop ``text``, or None to keep it."""
        length = self.spec.length
        if len(text) < max(length.min_chars, 1):
            return Reason.LENGTH_TOO_SHORT
        if length.max_chars is not None and len(text) > length.max_chars:
            return Reason.LENGTH_TOO_LONG
        repetition = self.spec.repetition
        if repetition is not None:
            if duplicate_line_fraction(text) > repetition.max_duplicate_line_fraction:
                return Reason.REPETITION_LINES
            if top_ngram_fraction(text) > repetition.max_top_ngram_fraction:
                return Reason.REPETITION_NGRAM
        if any(pattern.search(text) for pattern in self.blocklist):
            return Reason.BLOCKLIST
        return self._entropy(text)

    def _entropy(self, text: str) -> Reason | None:
        entropy = self.spec.entropy
        if entropy is None:
            return None
        bits = char_entropy(text)
        if bits < entropy.min_bits:
            return Reason.ENTROPY_LOW
        if bits > entropy.max_bits:
            return Reason.ENTROPY_HIGH
        return None
