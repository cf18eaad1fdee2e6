"""A synthetic corpus with planted duplicates and junk, and the truth about each document.

Words are random letter strings drawn with a Zipf law (a few with accents, so Unicode
normalization matters), sentences and paragraphs shaped like prose. Into that go:

- exact duplicates: an original again, byte-identical or differing only in what
  normalization removes (NFD accents, doubled spaces, trailing blanks, CRLF);
- near duplicates: an original with a few words replaced, with a measured word
  5-gram Jaccard similarity of at least ``near_min_jaccard`` to it;
- related documents (hard negatives): an original with a quarter of its words
  replaced, similar but well under any sane threshold: they must be kept;
- junk, one class per filter: too short, too long, repeated lines, a repeated
  2-gram, a blocklisted phrase.

The order is shuffled, so a duplicate may come before its original; the truth is
about clusters: of each original and its copies, only the first in corpus order
should survive. Shared by the workload tests and bench/data_pipeline.py.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BLOCKED_PHRASE = "casino jackpot bonus"
BLOCKLIST = [r"(?i)casino\s+jackpot"]
JUNK = ("short", "long", "repeated_lines", "repeated_ngram", "blocked")
"""Junk kinds, and the filter reason each must be removed for (see REASONS)."""
REASONS = {
    "short": "length_too_short",
    "long": "length_too_long",
    "repeated_lines": "repetition_lines",
    "repeated_ngram": "repetition_ngram",
    "blocked": "blocklist",
}
MAX_CHARS = 6000
"""A spec's maxChars for which the "long" junk is too long and nothing else is."""

_WORD = re.compile(r"\w+")


def shingle_set(text: str, n: int = 5) -> set[str]:
    words = _WORD.findall(unicodedata.normalize("NFC", text).lower())
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingle_set(a, n), shingle_set(b, n)
    return len(sa & sb) / len(sa | sb)


@dataclass(frozen=True)
class Doc:
    id: int
    text: str
    """As written to the corpus files."""
    canonical: str
    """What the text is after NFC and whitespace normalization."""
    kind: str
    """original, exact, near, related, or a junk kind."""
    cluster: int | None
    """The original's id for originals and their copies; None for related and junk."""
    similarity: float = 1.0
    """Word 5-gram Jaccard with the original (near and related)."""


@dataclass
class Corpus:
    docs: list[Doc]
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.counts = Counter(d.kind for d in self.docs)

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.docs]

    def units(self) -> dict[str, tuple[int, bool]]:
        """Distinct canonical texts of clustered documents -> (cluster, must be removed).

        Exact copies share a text, so a text is the unit a kept set can be judged on;
        the first text of each cluster in corpus order must stay, every other must go.
        """
        first_of_cluster: dict[int, str] = {}
        units: dict[str, tuple[int, bool]] = {}
        for doc in self.docs:
            if doc.cluster is None or doc.canonical in units:
                continue
            first = first_of_cluster.setdefault(doc.cluster, doc.canonical)
            units[doc.canonical] = (doc.cluster, first != doc.canonical)
        return units

    def expected_exact(self) -> int:
        clustered = [d.canonical for d in self.docs if d.cluster is not None]
        return len(clustered) - len(set(clustered))

    def expected_near(self) -> int:
        return sum(1 for _, remove in self.units().values() if remove)

    def expected_kept(self) -> set[str]:
        kept = {text for text, (_, remove) in self.units().items() if not remove}
        return kept | {d.canonical for d in self.docs if d.kind == "related"}

    def scores(self, kept: set[str]) -> tuple[float, float]:
        """Precision and recall of near-duplicate removal, judged on distinct texts."""
        truth = self.units()
        removed = {text for text in truth if text not in kept}
        planted = {text for text, (_, remove) in truth.items() if remove}
        related = {d.canonical for d in self.docs if d.kind == "related"}
        removed |= {text for text in related if text not in kept}
        hits = len(removed & planted)
        precision = hits / len(removed) if removed else 1.0
        recall = hits / len(planted) if planted else 1.0
        return precision, recall


class _Writer:
    def __init__(self, rng: random.Random, vocabulary: int) -> None:
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        words: set[str] = set()
        while len(words) < vocabulary:
            word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
            if rng.random() < 0.03:
                word += rng.choice("éüàç")
            words.add(word)
        self.words = sorted(words)
        weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self.words))]
        self.cumulative = list(itertools.accumulate(weights))

    def words_of(self, count: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cumulative, k=count)

    def sentence(self) -> str:
        words = self.words_of(self.rng.randint(8, 18))
        return " ".join([words[0].capitalize(), *words[1:]]) + "."

    def prose(self, words: int) -> str:
        paragraphs: list[str] = []
        total = 0
        while total < words:
            sentences = [self.sentence() for _ in range(self.rng.randint(2, 5))]
            total += sum(len(s.split()) for s in sentences)
            paragraphs.append(" ".join(sentences))
        return "\n".join(paragraphs)

    def edit(self, text: str, edits: int) -> str:
        """Replace ``edits`` words, spread over the text so each breaks its own n-grams."""
        lines = [line.split(" ") for line in text.split("\n")]
        slots = [(i, j) for i, line in enumerate(lines) for j in range(len(line))]
        step = len(slots) // (edits + 1)
        for k in range(1, edits + 1):
            i, j = slots[k * step + self.rng.randint(-step // 3, step // 3)]
            lines[i][j] = self.words_of(1)[0] + "x"
        return "\n".join(" ".join(line) for line in lines)

    def disguise(self, text: str) -> str:
        """The same text once normalized: decomposed accents and messy whitespace."""
        variant = self.rng.randrange(3)
        if variant == 0:
            return text
        if variant == 1:
            return unicodedata.normalize("NFD", text).replace(" ", "  ", 3) + "  \n"
        return text.replace("\n", " \r\n").replace(". ", ".\t ", 2)


def generate(
    originals: int = 200,
    exact: int = 30,
    near: int = 40,
    related: int = 10,
    junk_each: int = 6,
    *,
    words: int = 180,
    near_min_jaccard: float = 0.88,
    seed: int = 7,
) -> Corpus:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    writer = _Writer(rng, vocabulary=6000)
    docs: list[tuple[str, str, str, int | None, float]] = []
    bases = [writer.prose(words) for _ in range(originals)]
    docs += [(text, text, "original", i, 1.0) for i, text in enumerate(bases)]
    for _ in range(exact):
        i = rng.randrange(originals)
        docs.append((writer.disguise(bases[i]), bases[i], "exact", i, 1.0))
    for _ in range(near):
        i = rng.randrange(originals)
        for edits in (3, 2, 1):
            text = writer.edit(bases[i], edits)
            similarity = jaccard(text, bases[i])
            if similarity >= near_min_jaccard:
                break
        docs.append((text, text, "near", i, similarity))
    for _ in range(related):
        i = rng.randrange(originals)
        text = writer.edit(bases[i], len(bases[i].split()) // 20)
        docs.append((text, text, "related", None, jaccard(text, bases[i])))
    for _ in range(junk_each):
        short = writer.sentence()[:60]
        long = writer.prose(MAX_CHARS // 4)
        line = writer.sentence()
        repeated_lines = "\n".join([writer.sentence(), *[line] * 8, writer.sentence()])
        spam = " ".join([writer.sentence(), *["click here"] * 40, writer.sentence()])
        blocked = writer.prose(words // 2) + f" Win a {BLOCKED_PHRASE} today."
        for kind, text in zip(JUNK, (short, long, repeated_lines, spam, blocked), strict=True):
            docs.append((text, text, kind, None, 1.0))
    rng.shuffle(docs)
    return Corpus(
        [
            Doc(n, text, canonical, kind, cluster, similarity)
            for n, (text, canonical, kind, cluster, similarity) in enumerate(docs)
        ]
    )


def write_jsonl(texts: list[str], path: Path, field_name: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({field_name: text, "meta": {"len": len(text)}}) + "\n")
    return path


def write_parquet(texts: list[str], path: Path, field_name: str = "text") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(texts))), field_name: texts}), path)
    return path


def write_text_dir(texts: list[str], root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (root / f"doc-{i:06d}.txt").write_text(text, encoding="utf-8")
    return root


def read_sources(dataset: Path, eos: str = "<|endoftext|>") -> list[tuple[list[str], str]]:
    """The documents in a packed dataset, decoded with its own tokenizer, per source.

    Each source is packed as its own stream (its rows, in order, are its documents back
    to back); for each: the complete documents, in training order, and the start of the
    one the dropped tail cut short ("" when none was).
    """
    import numpy as np
    from tokenizers import Tokenizer

    from modelsmith_runtime.shards import PackedDataset

    packed = PackedDataset.open(dataset)
    tokenizer = Tokenizer.from_file(str(dataset / "tokenizer" / "tokenizer.json"))
    rows = np.concatenate([np.asarray(a) for a in packed.arrays])
    tags = np.concatenate([packed.source_ids(i) for i in range(len(packed.arrays))])
    out = []
    for source in range(len(packed.sources)):
        ids = rows[tags == source].reshape(-1).tolist()
        pieces = tokenizer.decode(ids, skip_special_tokens=False).split(eos)
        out.append((pieces[:-1], pieces[-1]))
    return out


def read_back(dataset: Path, eos: str = "<|endoftext|>") -> tuple[list[str], str]:
    """`read_sources` of a one-source dataset: its documents and its cut-short start."""
    (only,) = read_sources(dataset, eos)
    return only


def kept_texts(dataset: Path, candidates: set[str]) -> set[str]:
    """The distinct candidate texts found in a dataset, the cut-short ones included."""
    kept: set[str] = set()
    for complete, partial in read_sources(dataset):
        kept |= set(complete)
        if partial:
            kept |= {text for text in candidates if text.startswith(partial)}
    return kept


def entropy_junk(count: int, seed: int = 13) -> tuple[list[str], list[str]]:
    """Documents every other filter keeps but a character-entropy band must drop.

    Low: one character, two alternating, the ten digits in turn (0, 1 and 3.3 bits per
    character). High: base64 of random bytes (6.0) and words of random printable
    characters (5.9 to 6.1). Each is one long word or has no repeated 2-gram, so the length
    and repetition filters let it through. Prose of this module's generator is 4.6.
    """
    import base64
    import string

    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    low: list[str] = []
    high: list[str] = []
    printable = string.ascii_letters + string.digits + string.punctuation
    for i in range(count):
        size = 300 + 10 * i
        patterns = (rng.choice("abcdefgh"), "xy", "0123456789")
        low.append((patterns[i % 3] * size)[:size])
        if i % 2:
            high.append(base64.b64encode(rng.randbytes(size)).decode())
        else:
            words = ("".join(rng.choices(printable, k=rng.randint(3, 9))) for _ in range(size // 6))
            high.append(" ".join(words))
    return low, high
