"""DataPipeline: raw text in, cleaned, deduplicated, tokenized training shards out.

The knobs follow datatrove's pipeline (readers, Gopher-style quality filters, MinHash
dedup with a cross-shard reduce step, tokenization) so its users find what they know.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from modelsmith.api.common import (
    BatchStatus,
    Input,
    Uri,
    WorkloadSpec,
    batch_columns,
    cel,
    defaulted,
)
from modelsmith.api.meta import CamelModel, KindInfo, LongestChild


class SourceFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    TEXT = "text"


class DataSource(CamelModel):
    """One raw corpus and its share of the mixture."""

    uri: Uri = Field(
        description="Where the raw documents are: a path on a mounted volume, file://, "
        "s3:// or gs://."
    )
    format: SourceFormat = Field(description="How the documents are stored.")
    text_field: str = Field(
        default="text", max_length=256, description="jsonl/parquet: the field holding the text."
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Mixture weight: sources are sampled in proportion to their weights.",
    )


class UnicodeForm(StrEnum):
    NFC = "NFC"
    NFKC = "NFKC"
    NONE = "none"


class Normalize(CamelModel):
    """Text clean-up applied before any filter."""

    unicode: UnicodeForm = Field(default=UnicodeForm.NFC, description="Unicode normal form.")
    collapse_whitespace: bool = Field(default=True, description="Squeeze runs of whitespace.")


class LengthFilter(CamelModel):
    """Drop documents that are too short to teach anything or too long to be text."""

    model_config = cel(
        (
            "!has(self.maxChars) || self.minChars < self.maxChars",
            "filters.length.minChars must be below maxChars",
            lambda s: s.max_chars is None or s.min_chars < s.max_chars,
        )
    )

    min_chars: int = Field(default=200, ge=0, description="Minimum characters.")
    max_chars: int | None = Field(default=None, ge=1, description="Maximum characters.")


class RepetitionFilter(CamelModel):
    """Gopher-style repetition removal (MassiveText, Rae et al. 2021)."""

    max_duplicate_line_fraction: float = Field(
        default=0.3, ge=0, le=1, description="Drop if more of the lines are repeats."
    )
    max_top_ngram_fraction: float = Field(
        default=0.2, ge=0, le=1, description="Drop if the top 2-gram covers more characters."
    )


class PerplexityFilter(CamelModel):
    """Drop documents a reference language model finds implausible."""

    reference_model: Input = Field(description="A small causal LM in the Hugging Face layout.")
    max_perplexity: float = Field(gt=0, description="Drop documents above this perplexity.")


class EntropyFilter(CamelModel):
    """Drop documents whose characters are too predictable or too random.

    The Shannon entropy of a document's character distribution, in bits per
    character: a run of one character scores 0, ``abab...`` 1, English prose about
    4.2 to 4.9 (the standard library's docstrings: median 4.5), random base64 6.0,
    random bytes near 8. Hex dumps score 4.0, inside any band: this filter does not
    catch them.
    """

    model_config = cel(
        (
            "self.minBits < self.maxBits",
            "filters.entropy.minBits must be below filters.entropy.maxBits",
            lambda s: s.min_bits < s.max_bits,
        )
    )

    min_bits: float = Field(
        default=3.5,
        ge=0,
        le=32,
        description="Drop documents below this many bits per character (repeated characters, "
        "one word over and over).",
    )
    max_bits: float = Field(
        default=5.5,
        gt=0,
        le=32,
        description="Drop documents above this many bits per character (random strings, "
        "base64, binary read as text).",
    )


class DomainFilter(CamelModel):
    """Keep documents that read like a reference corpus: TF-IDF cosine similarity.

    scikit-learn's TfidfVectorizer is fitted on the reference documents alone (so
    every worker fits the same one and scores a document the same way); each
    document is scored against the reference set's centroid. Words the reference
    never uses count in a document's length, so text in another vocabulary scores
    near 0.
    """

    reference: Input = Field(
        description="Documents of the wanted domain: a jsonl, parquet or text corpus (a file "
        "or a directory), read like a source."
    )
    format: SourceFormat = Field(
        default=SourceFormat.JSONL, description="How the reference documents are stored."
    )
    text_field: str = Field(
        default="text", max_length=256, description="jsonl/parquet: the field holding the text."
    )
    min_similarity: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Drop documents whose cosine similarity to the reference centroid is "
        "below this. Word TF-IDF cosines are small: held-out documents of the reference's own "
        "domain score 0.07 to 0.18, unrelated vocabularies 0.",
    )


class Filters(CamelModel):
    """Quality filters, applied in this order; per-filter stats land in the report."""

    length: LengthFilter = defaulted(LengthFilter, "Length bounds.")
    repetition: RepetitionFilter | None = defaulted(
        RepetitionFilter, "Repetition removal; null disables it."
    )
    blocklist: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=1024, description="Regexes; a match drops the document."
    )
    entropy: EntropyFilter | None = Field(
        default=None, description="Character-entropy band (bits per character); off when unset."
    )
    domain: DomainFilter | None = Field(
        default=None, description="Similarity to a reference corpus; off when unset."
    )
    perplexity: PerplexityFilter | None = Field(
        default=None, description="Perplexity filter with a reference model."
    )


class NearDedupMethod(StrEnum):
    MINHASH = "minhash"
    SIMHASH = "simhash"
    NONE = "none"


MINHASH_THRESHOLD = 0.8
MINHASH_PERMUTATIONS = 128


class SimHash(CamelModel):
    """SimHash near-duplicate detection (Charikar 2002; Manku et al. 2007)."""

    max_hamming_distance: int = Field(
        default=3,
        ge=0,
        le=12,
        description="Two documents whose 64-bit fingerprints differ in at most this many bits "
        "are near duplicates: 3 means 95% of the bits agree (61 of 64). The candidate search "
        "splits the fingerprint into this many plus one blocks, so each step up makes the "
        "blocks shorter and the search slower: keep it at 4 or less for millions of documents.",
    )


class Dedup(CamelModel):
    """Exact and near-duplicate removal, across all workers' shards."""

    model_config = cel(
        (
            "!has(self.threshold) || self.near != 'simhash'",
            "dedup.threshold is MinHash's Jaccard similarity: near simhash takes "
            "dedup.simhash.maxHammingDistance instead",
            lambda s: s.threshold is None or s.near != "simhash",
        ),
        (
            "!has(self.permutations) || self.near != 'simhash'",
            "dedup.permutations are MinHash's: near simhash has none to set",
            lambda s: s.permutations is None or s.near != "simhash",
        ),
        (
            "!has(self.simhash) || self.near == 'simhash'",
            "dedup.simhash applies to near simhash only",
            lambda s: s.simhash is None or s.near == "simhash",
        ),
    )

    exact: bool = Field(default=True, description="Remove byte-identical documents.")
    near: NearDedupMethod = Field(
        default=NearDedupMethod.MINHASH,
        description="Near-duplicate detection: minhash (Jaccard similarity of the shingle "
        "sets), simhash (Hamming distance of 64-bit fingerprints of them) or none.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=f"minhash: the Jaccard similarity at which two are duplicates "
        f"(default {MINHASH_THRESHOLD}).",
    )
    permutations: int | None = Field(
        default=None,
        ge=16,
        le=1024,
        description=f"minhash: permutations per signature (default {MINHASH_PERMUTATIONS}).",
    )
    simhash: SimHash | None = Field(
        default=None, description="simhash: its settings (default maxHammingDistance 3)."
    )
    ngram: int = Field(default=5, ge=1, le=32, description="Word n-gram size of the shingles.")

    @property
    def jaccard_threshold(self) -> float:
        return MINHASH_THRESHOLD if self.threshold is None else self.threshold

    @property
    def num_permutations(self) -> int:
        return MINHASH_PERMUTATIONS if self.permutations is None else self.permutations

    @property
    def max_hamming_distance(self) -> int:
        return (self.simhash or SimHash()).max_hamming_distance


class TrainTokenizer(CamelModel):
    """Train a byte-level BPE tokenizer on the cleaned text (HF tokenizers)."""

    vocab_size: int = Field(ge=256, le=1_048_576, description="Vocabulary size.")
    min_frequency: int = Field(default=2, ge=1, description="Merges must occur this often.")


class Tokenizer(CamelModel):
    """Exactly one of: train a new tokenizer, or use an existing one."""

    model_config = cel(
        (
            "has(self.train) != has(self.existing)",
            "tokenizer: set exactly one of train or existing",
            lambda s: (s.train is None) != (s.existing is None),
        )
    )

    train: TrainTokenizer | None = Field(default=None, description="Train a new BPE.")
    existing: Input | None = Field(
        default=None, description="A tokenizer in the Hugging Face layout (tokenizer.json)."
    )


class Packing(CamelModel):
    """How tokens are packed into fixed-length training sequences."""

    sequence_length: int = Field(
        default=2048, ge=16, le=1_048_576, description="Tokens per packed sequence."
    )
    shard_size_mb: int = Field(default=256, ge=1, le=65536, description="Target shard size.")


class DataEngine(StrEnum):
    INDEXED = "indexed"
    RAY = "ray"


class DataPipelineSpec(WorkloadSpec):
    """Desired state of a DataPipeline."""

    sources: list[DataSource] = Field(
        min_length=1, max_length=64, description="The raw corpora to mix, clean and tokenize."
    )
    normalize: Normalize = defaulted(Normalize, "Text normalization.")
    filters: Filters = defaulted(Filters, "Quality filters.")
    dedup: Dedup = defaulted(Dedup, "Deduplication.")
    tokenizer: Tokenizer = defaulted(
        Tokenizer,
        "Tokenizer to train or use (default: train a 32k BPE).",
        {"train": {"vocabSize": 32000}},
    )
    packing: Packing = defaulted(Packing, "Sequence packing.")
    workers: int = Field(
        default=1, ge=1, le=1024, description="Parallel workers, one Indexed Job pod each."
    )
    engine: DataEngine = Field(
        default=DataEngine.INDEXED,
        description=(
            "indexed: each worker pod cleans its slice of the sources and worker 0 merges "
            "them. ray: the worker pods form a Ray cluster and the pipeline runs on Ray Data."
        ),
    )


DATAPIPELINE = KindInfo(
    kind="DataPipeline",
    plural="datapipelines",
    short_names=("dp",),
    spec=DataPipelineSpec,
    status=BatchStatus,
    description="Raw text to cleaned, deduplicated, tokenized training shards.",
    longest_child=LongestChild("NAME-run-1023", "the hostname of the 1024th worker pod"),
    printer_columns=batch_columns("Tokens", ".status.outputs.metrics.tokens"),
)
