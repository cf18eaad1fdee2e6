"""Where every document went, in one ledger that workers fill and the reduce step sums.

Every document read ends in exactly one place: removed for one reason (the first one
that applied) or kept. So ``documents_in == sum(removed) + kept`` holds at every step,
and a report that does not add up points at a bug rather than at the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a document was removed; the names land in report.json and the metrics."""

    INVALID = "invalid"
    LENGTH_TOO_SHORT = "length_too_short"
    LENGTH_TOO_LONG = "length_too_long"
    REPETITION_LINES = "repetition_lines"
    REPETITION_NGRAM = "repetition_ngram"
    BLOCKLIST = "blocklist"
    ENTROPY_LOW = "entropy_low"
    ENTROPY_HIGH = "entropy_high"
    DOMAIN = "domain"
    PERPLEXITY = "perplexity"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"


@dataclass
class Tally:
    documents: int = 0
    bytes: int = 0

    def add(self, documents: int, size: int) -> None:
        self.documents += documents
        self.bytes += size


@dataclass
class Stats:
    """Counts of one worker's slice, or of the whole run once parts are merged.

    Bytes are UTF-8 bytes of the raw document (before normalization), so removed and
    kept bytes add up to what was read; an invalid record has no text and counts 0.
    """

    read: Tally = field(default_factory=Tally)
    removed: dict[Reason, Tally] = field(default_factory=dict)
    sources_in: dict[int, int] = field(default_factory=dict)
    """Source index -> documents read from it (invalid ones included)."""

    def count_read(self, source: int, size: int) -> None:
        self.read.add(1, size)
        self.sources_in[source] = self.sources_in.get(source, 0) + 1

    def remove(self, reason: Reason, size: int, documents: int = 1) -> None:
        self.removed.setdefault(reason, Tally()).add(documents, size)

    def removed_documents(self, reason: Reason) -> int:
        tally = self.removed.get(reason)
        return tally.documents if tally else 0

    def merge(self, other: Stats) -> None:
        self.read.add(other.read.documents, other.read.bytes)
        for reason, tally in other.removed.items():
            self.remove(reason, tally.bytes, tally.documents)
        for source, count in other.sources_in.items():
            self.sources_in[source] = self.sources_in.get(source, 0) + count

    def to_json(self) -> dict[str, Any]:
        return {
            "read": {"documents": self.read.documents, "bytes": self.read.bytes},
            "removed": {
                reason.value: {"documents": t.documents, "bytes": t.bytes}
                for reason, t in sorted(self.removed.items())
            },
            "sourcesIn": {str(k): v for k, v in sorted(self.sources_in.items())},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Stats:
        stats = cls(read=Tally(raw["read"]["documents"], raw["read"]["bytes"]))
        for reason, tally in raw["removed"].items():
            stats.remove(Reason(reason), tally["bytes"], tally["documents"])
        stats.sources_in = {int(k): int(v) for k, v in raw["sourcesIn"].items()}
        return stats

    def summary(self) -> str:
        """One line for an error message: what removed the documents."""
        parts = [f"{r.value}: {t.documents}" for r, t in sorted(self.removed.items())]
        return ", ".join(parts) if parts else "nothing removed"
