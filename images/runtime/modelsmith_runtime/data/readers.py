"""Raw documents from the spec's sources, each worker decoding only its own share.

Every worker lists the same files in the same order and numbers the records the same
way, so a document's key (source, file, position) and its owner (a running record
counter modulo the number of workers) come out the same whichever worker looks. The
split is therefore even whatever the file layout (one big file or thousands of small
ones), and the reduce step can order the documents exactly as a single worker would.
A worker still scans the records it does not own, but does not parse them.

What a document is, per format: a jsonl line (an object with the text field), a
parquet row (the text column), a whole text file. Paths go through fsspec, so a
local path, file://, pvc://, s3:// or gs:// all read the same way, and compressed
files (.gz, .zst …) are opened by their suffix.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from modelsmith.api.datapipeline import DataSource, SourceFormat
from modelsmith_runtime.data.stats import Reason, Stats
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.storage import local_path

MAX_INVALID_FRACTION = 0.1
"""More invalid records than this, in one source, and the source is called corrupt."""

_PARQUET_BATCH_ROWS = 4096
_READ_ERRORS = (pa.ArrowInvalid, gzip.BadGzipFile, zlib.error, EOFError, UnicodeDecodeError)


@dataclass(frozen=True)
class Document:
    source: int
    file: int
    position: int
    """Line number (jsonl, 1-based), row number (parquet, 0-based), 0 (text)."""
    text: str
    size: int
    """UTF-8 bytes of the raw text."""


@dataclass(frozen=True)
class SourceFiles:
    index: int
    spec: DataSource
    fs: Any
    paths: tuple[str, ...]
    sizes: tuple[int, ...]

    def fingerprint(self) -> list[Any]:
        """What a stale worker part would disagree on if the input changed."""
        return [self.spec.uri, list(zip(self.paths, self.sizes, strict=True))]


def _filesystem(uri: str) -> tuple[Any, str]:
    path = local_path(uri)
    if path is not None:
        return LocalFileSystem(), str(path)
    fs, root = fsspec.core.url_to_fs(uri)
    return fs, root


def _hidden(relative: str) -> bool:
    """Spark's _SUCCESS and _temporary/, our completion marker and .staging-*/, dot-files."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_source(index: int, source: DataSource) -> SourceFiles:
    fs, root = _filesystem(source.uri)
    if not fs.exists(root):
        raise BadInputError("MissingInput", f"sources[{index}]: {source.uri} does not exist")
    if fs.isdir(root):
        found = fs.find(root, detail=True)
        entries = sorted((p, int(info.get("size") or 0)) for p, info in found.items())
        entries = [(p, s) for p, s in entries if not _hidden(p.removeprefix(root))]
    else:
        entries = [(root, int(fs.size(root) or 0))]
    if not entries:
        raise BadInputError("EmptyCorpus", f"sources[{index}]: {source.uri} holds no files")
    return SourceFiles(
        index, source, fs, tuple(p for p, _ in entries), tuple(s for _, s in entries)
    )


@dataclass
class _Invalid:
    """Invalid records of one source in this worker's share, and the first of them."""

    records: int = 0
    invalid: int = 0
    first: str = ""

    def bad(self, where: str, why: str) -> None:
        self.invalid += 1
        if not self.first:
            self.first = f"{where}: {why}"

    def check(self, source: SourceFiles) -> None:
        if self.invalid and self.invalid > MAX_INVALID_FRACTION * self.records:
            raise BadInputError(
                "CorruptInput",
                f"sources[{source.index}] {source.spec.uri}: {self.invalid} of {self.records} "
                f"records are invalid (more than {MAX_INVALID_FRACTION:.0%}); first: {self.first}",
            )


class _Counter:
    """The running record number across the whole corpus: decides who owns a record."""

    def __init__(self, worker: int, workers: int) -> None:
        self.worker = worker
        self.workers = workers
        self.value = 0

    def mine(self) -> bool:
        owned = self.value % self.workers == self.worker
        self.value += 1
        return owned


def _jsonl(
    source: SourceFiles, file: int, counter: _Counter, invalid: _Invalid
) -> Iterator[tuple[int, str | None]]:
    path = source.paths[file]
    field_name = source.spec.text_field
    with source.fs.open(path, "rb", compression="infer") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip() or not counter.mine():
                continue
            invalid.records += 1
            try:
                record = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
                invalid.bad(f"{path}:{line_no}", f"not JSON ({exc})")
                yield line_no, None
                continue
            text = record.get(field_name) if isinstance(record, dict) else None
            if not isinstance(text, str):
                invalid.bad(f"{path}:{line_no}", f"no string field {field_name!r}")
                yield line_no, None
                continue
            yield line_no, text


def _parquet(
    source: SourceFiles, file: int, counter: _Counter, invalid: _Invalid
) -> Iterator[tuple[int, str | None]]:
    path = source.paths[file]
    field_name = source.spec.text_field
    with source.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if field_name not in parquet.schema_arrow.names:
            raise BadInputError(
                "InvalidInput",
                f"{path}: no column {field_name!r} (columns: {parquet.schema_arrow.names})",
            )
        row = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field_name]):
            owned = [i for i in range(batch.num_rows) if counter.mine()]
            values = batch.column(0).take(pa.array(owned, pa.int64())).to_pylist()
            for i, value in zip(owned, values, strict=True):
                invalid.records += 1
                if not isinstance(value, str):
                    invalid.bad(f"{path}: row {row + i}", f"{field_name!r} is not a string")
                    yield row + i, None
                    continue
                yield row + i, value
            row += batch.num_rows


def _text(
    source: SourceFiles, file: int, counter: _Counter, invalid: _Invalid
) -> Iterator[tuple[int, str | None]]:
    if not counter.mine():
        return
    path = source.paths[file]
    invalid.records += 1
    with source.fs.open(path, "rb", compression="infer") as handle:
        data = handle.read()
    try:
        yield 0, data.decode("utf-8")
    except UnicodeDecodeError as exc:
        invalid.bad(path, f"not UTF-8 ({exc})")
        yield 0, None


def _utf8_size(text: str | None) -> int:
    """-1 for text JSON can hold but UTF-8 cannot (lone surrogates): not a document."""
    if text is None:
        return 0
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


_READERS = {SourceFormat.JSONL: _jsonl, SourceFormat.PARQUET: _parquet, SourceFormat.TEXT: _text}


def read_documents(
    sources: list[SourceFiles], worker: int, workers: int, stats: Stats
) -> Iterator[Document]:
    """This worker's documents, in corpus order; invalid ones only counted in ``stats``.

    Raises BadInputError when a file cannot be decoded at all or a source is mostly
    invalid, naming the file (and line or row) of the first bad record.
    """
    counter = _Counter(worker, workers)
    for source in sources:
        reader = _READERS[source.spec.format]
        invalid = _Invalid()
        for file in range(len(source.paths)):
            try:
                for position, text in reader(source, file, counter, invalid):
                    size = _utf8_size(text)
                    stats.count_read(source.index, max(size, 0))
                    if text is None or size < 0:
                        if text is not None:
                            where = f"{source.paths[file]} (record {position})"
                            invalid.bad(where, "text with a lone surrogate")
                        stats.remove(Reason.INVALID, 0)
                        continue
                    yield Document(source.index, file, position, text, size)
            except _READ_ERRORS as exc:
                raise BadInputError(
                    "UnreadableInput", f"sources[{source.index}]: {source.paths[file]}: {exc}"
                ) from exc
        invalid.check(source)
