"""The DataPipeline's pure parts, in process: filters, normalization, dedup, mixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelsmith.api.datapipeline import DataPipelineSpec, Filters, Normalize
from modelsmith_runtime.data.dedup import exact_key, near_duplicates, shingles, signatures
from modelsmith_runtime.data.filters import (
    QualityFilters,
    duplicate_line_fraction,
    top_ngram_fraction,
)
from modelsmith_runtime.data.normalize import normalize
from modelsmith_runtime.data.parts import Part
from modelsmith_runtime.data.pipeline import Reduced, mixture
from modelsmith_runtime.data.stats import Reason, Stats
from modelsmith_runtime.errors import BadInputError

from .corpus import BLOCKLIST, MAX_CHARS, REASONS, generate, write_jsonl


def test_duplicate_line_fraction_counts_repeats_of_earlier_lines() -> None:
    assert duplicate_line_fraction("a\nb\nc\nd") == 0.0
    assert duplicate_line_fraction("a\na\na\nb") == pytest.approx(0.5)
    assert duplicate_line_fraction("a\n\n\nb\n  \na") == pytest.approx(1 / 3)
    assert duplicate_line_fraction("") == 0.0


def test_top_ngram_fraction_is_gopher_character_share() -> None:
    # "ab cd" occurs 3 times: 3 * 4 characters of 4 + 3 * 4 = 16 word characters.
    assert top_ngram_fraction("ab cd ab cd ab cd") == pytest.approx(12 / 12)
    assert top_ngram_fraction("one two three four five") == 0.0
    text = "alpha beta " * 2 + "gamma delta epsilon zeta eta theta"
    words = text.split()
    assert top_ngram_fraction(text) == pytest.approx(2 * 9 / sum(map(len, words)))


def test_normalize_makes_disguised_copies_identical() -> None:
    clean = "Café au lait.\nSecond line here."
    messy = "Cafe\u0301  au\tlait.  \r\n\r\n\r\n  Second\u00a0line here.  "
    spec = Normalize()
    assert normalize(messy, spec) == "Café au lait.\n\nSecond line here."
    assert normalize(clean, spec) == clean
    assert normalize("ﬁ", Normalize(unicode="NFKC")) == "fi"
    assert normalize(messy, Normalize(unicode="none", collapseWhitespace=False)) == messy


def test_quality_filters_name_the_first_reason() -> None:
    filters = QualityFilters(
        Filters.model_validate(
            {"length": {"minChars": 20, "maxChars": 200}, "blocklist": [r"(?i)forbidden"]}
        )
    )
    prose = "Every sentence here is different from the one before it, as prose goes."
    assert filters.check(prose) is None
    assert filters.check("too short") is Reason.LENGTH_TOO_SHORT
    assert filters.check("x" * 201) is Reason.LENGTH_TOO_LONG
    assert filters.check("same line again\n" * 5) is Reason.REPETITION_LINES
    assert filters.check("buy now " * 10) is Reason.REPETITION_NGRAM
    assert filters.check(prose + " FORBIDDEN") is Reason.BLOCKLIST
    assert QualityFilters(Filters.model_validate({"repetition": None})).check("a\n" * 300) is None


def test_bad_blocklist_regex_is_bad_input() -> None:
    with pytest.raises(BadInputError) as caught:
        QualityFilters(Filters.model_validate({"blocklist": ["ok", "(unclosed"]}))
    assert caught.value.reason == "InvalidSpec"
    assert "blocklist[1]" in caught.value.message


def test_every_junk_class_is_caught_by_its_filter() -> None:
    corpus = generate(originals=20, exact=0, near=0, related=0, junk_each=4)
    filters = QualityFilters(
        Filters.model_validate(
            {"length": {"minChars": 200, "maxChars": MAX_CHARS}, "blocklist": BLOCKLIST}
        )
    )
    for doc in corpus.docs:
        reason = filters.check(normalize(doc.text, Normalize()))
        expected = REASONS.get(doc.kind)
        assert (reason.value if reason else None) == expected, (doc.kind, doc.text[:80])


def test_minhash_dedup_precision_and_recall_on_planted_near_duplicates() -> None:
    corpus = generate(originals=200, exact=0, near=60, related=20)
    texts = [
        normalize(d.text, Normalize())
        for d in corpus.docs
        if d.cluster is not None or d.kind == "related"
    ]
    sigs = signatures(texts, len(texts), num_perm=128, ngram=5)
    removed = near_duplicates(sigs, threshold=0.8)
    kept = {text for text, dup in zip(texts, removed, strict=True) if not dup}
    precision, recall = corpus.scores(kept)
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision


def test_near_dedup_keeps_the_first_of_a_cluster_whatever_the_chain() -> None:
    base = " ".join(f"w{i}" for i in range(200))
    edited = base.replace("w50 ", "x50 ").replace("w150 ", "x150 ")
    twice = edited.replace("w100 ", "x100 ")
    unrelated = " ".join(f"u{i}" for i in range(200))
    sigs = signatures([twice, unrelated, base, edited], 4, num_perm=128, ngram=5)
    assert near_duplicates(sigs, threshold=0.8).tolist() == [False, False, True, True]


def test_shingles_ignore_case_and_punctuation() -> None:
    assert shingles("The cat, the HAT!", 2) == shingles("the cat the hat", 2)
    assert shingles("one two", 5) == {b"one two"}
    assert exact_key("a") != exact_key("a ")


def _reduced(sources: list[int]) -> Reduced:
    texts = [f"document {i}" for i in range(len(sources))]
    keys = np.asarray([(s, 0, i) for i, s in enumerate(sources)], dtype=np.int64)
    part = Part(
        keys=keys,
        texts=texts,
        sizes=np.ones(len(texts), dtype=np.int64),
        hashes=[exact_key(t) for t in texts],
        signatures=None,
        stats=Stats(),
    )
    return Reduced(part, Stats())


def test_mixture_weight_scales_each_sources_documents() -> None:
    spec = DataPipelineSpec.model_validate(
        {
            "output": {"uri": "/data/out"},
            "sources": [
                {"uri": "/a", "format": "jsonl", "weight": 2},
                {"uri": "/b", "format": "jsonl", "weight": 0.5},
                {"uri": "/c", "format": "jsonl", "weight": 1.5},
            ],
        }
    )
    reduced = _reduced([0] * 400 + [1] * 400 + [2] * 400)
    order = mixture(reduced, spec)
    per_source = np.bincount(reduced.part.keys[order, 0], minlength=3)
    assert per_source[0] == 800
    assert 160 <= per_source[1] <= 240
    assert 520 <= per_source[2] <= 680
    assert order == mixture(reduced, spec), "the mixture is deterministic"
    assert order[:400] != sorted(order[:400]), "and shuffled"


def test_object_storage_sources_and_parts_go_through_fsspec() -> None:
    """memory:// stands in for s3:// and gs://: the same fsspec code path, no local path."""
    import fsspec

    from modelsmith.api.datapipeline import DataSource
    from modelsmith.contract import Producer
    from modelsmith_runtime.data.parts import is_complete, load_part, part_uri, save_part
    from modelsmith_runtime.data.readers import list_source, read_documents

    fs = fsspec.filesystem("memory")
    texts = ["first document", "second document", "third document"]
    fs.pipe("/bench-corpus/a.jsonl", "".join(f'{{"text": "{t}"}}\n' for t in texts).encode())
    fs.pipe("/bench-corpus/_SUCCESS", b"")
    source = DataSource.model_construct(
        uri="memory://bench-corpus", format="jsonl", text_field="text", weight=1.0
    )
    files = list_source(0, source)
    assert [p.rsplit("/", 1)[-1] for p in files.paths] == ["a.jsonl"]
    stats = Stats()
    docs = [d.text for w in (0, 1) for d in read_documents([files], w, 2, stats)]
    assert sorted(docs) == sorted(texts)

    part = Part(
        keys=np.asarray([[0, 0, 1], [0, 0, 3]], dtype=np.int64),
        texts=texts[:2],
        sizes=np.asarray([14, 15], dtype=np.int64),
        hashes=[exact_key(t) for t in texts[:2]],
        signatures=signatures(texts[:2], 2, num_perm=16, ngram=1),
        stats=stats,
    )
    uri = part_uri("memory://bench-out/dataset", 1)
    assert not is_complete(uri, "run-a")
    producer = Producer(kind="DataPipeline", name="test", attempt=0)
    save_part(part, uri, "run-a", 1, producer)
    assert is_complete(uri, "run-a")
    assert not is_complete(uri, "run-b"), "a part of another run is not this run's"
    save_part(part, uri, "run-b", 1, producer.model_copy(update={"attempt": 1}))
    assert is_complete(uri, "run-b"), "a retried worker replaces its own stale part"
    loaded = load_part(uri)
    assert loaded.texts == part.texts
    assert loaded.hashes == part.hashes
    assert np.array_equal(loaded.keys, part.keys)
    assert loaded.signatures is not None and part.signatures is not None
    assert np.array_equal(loaded.signatures, part.signatures)
    assert loaded.stats.to_json() == stats.to_json()


def test_shares_cover_every_record_once_whatever_the_file_layout(tmp_path: Path) -> None:
    """The Ray engine's shares: slices of few files, runs of many; the same records."""
    from modelsmith.api.datapipeline import DataSource
    from modelsmith_runtime.data.readers import (
        list_source,
        plan_shares,
        read_documents,
        read_records,
    )

    texts = [f"document number {i}" for i in range(23)]
    for name, chunks in (("one", [texts]), ("many", [texts[i : i + 2] for i in range(0, 23, 2)])):
        for n, chunk in enumerate(chunks):
            write_jsonl(chunk, tmp_path / name / f"{n:03d}.jsonl")
        source = DataSource.model_validate({"uri": str(tmp_path / name), "format": "jsonl"})
        files = [list_source(0, source)]
        expected = [(d.source, d.file, d.position) for d in read_documents(files, 0, 1, Stats())]
        for target in (1, 3, 8, 40):
            shares = plan_shares(files, target)
            keys = [r.key for share in shares for r in read_records(files, share)]
            assert sorted(keys) == expected, (name, target)
            assert sum(s.input_bytes for s in shares) == sum(files[0].sizes)
            assert len(shares) >= min(target, 8), "enough shares to spread over the CPUs"
