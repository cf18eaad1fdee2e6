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


class Filters(CamelModel):
    """Quality filters, applied in this order; per-filter stats land in the report."""

    length: LengthFilter = defaulted(LengthFilter, "Length bounds.")
    repetition: RepetitionFilter | None = defaulted(
        RepetitionFilter, "Repetition removal; null disables it."
    )
    blocklist: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=1024, description="Regexes; a match drops the document."
    )
    perplexity: PerplexityFilter | None = Field(
        default=None, description="Perplexity filter with a reference model."
    )


class NearDedupMethod(StrEnum):
    MINHASH = "minhash"
    NONE = "none"


class Dedup(CamelModel):
    """Exact and near-duplicate removal, across all workers' shards."""

    exact: bool = Field(default=True, description="Remove byte-identical documents.")
    near: NearDedupMethod = Field(
        default=NearDedupMethod.MINHASH, description="Near-duplicate detection."
    )
    threshold: float = Field(
        default=0.8, gt=0, le=1, description="Jaccard similarity at which two are duplicates."
    )
    permutations: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    ngram: int = Field(default=5, ge=1, le=32, description="Word n-gram size of the shingles.")


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
