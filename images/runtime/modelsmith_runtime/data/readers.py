"""Raw documents from the spec's sources, each worker decoding only its own share.

Every worker lists the same files in the same order and numbers the records the same
way, so a document's key (source, file, position) and its owner (a running record
counter modulo the number of workers) come out the same whichever worker looks. The
split is therefore even whatever the file layout (one big file or thousands of small
ones), and the reduce step can order the documents exactly as a single worker would.
A worker still scans the records it does not own, but does not parse them.

The Ray engine reads the same way with more, smaller shares (`plan_shares`): groups of
whole files when there are many, every k-th record of one file when there are few.
Either way a record's key is the same, so both engines order the corpus identically.

What a document is, per format: a jsonl line (an object with the text field), a
parquet row (the text column), a whole text file. Paths go through fsspec, so a
local path, file://, pvc://, s3:// or gs:// all read the same way, and compressed
files (.gz, .zst …) are opened by their suffix.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from modelsmith.api.datapipeline import DataSource, SourceFormat
from modelsmith_runtime.data.stats import Reason, Stats
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.uris import open_fs

MAX_INVALID_FRACTION = 0.1
"""More invalid records than this, in one source, and the source is called corrupt."""

_PARQUET_BATCH_ROWS = 4096
_SCAN_REPORT_LINES = 1024
"""How often (in lines) a jsonl reader tells its progress callback where it is."""
MAX_SLICES_PER_FILE = 64
"""Each slice of a file scans the whole file (it only parses its own records), so
slicing one file ever finer costs more reading than it saves in parsing."""
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
class Record:
    """A record as read: a document's text, or None and what is wrong with the record."""

    source: int
    file: int
    position: int
    text: str | None
    size: int
    """UTF-8 bytes of the text; 0 for an invalid record."""
    problem: str
    """Empty for a document; ``"<where>: <why>"`` for an invalid record."""

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.source, self.file, self.position)


Scanned = Callable[[int], None]
"""Told how many more input bytes (as stored, compressed or not) a reader got through."""


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


def _hidden(relative: str) -> bool:
    """Spark's _SUCCESS and _temporary/, our completion marker and .staging-*/, dot-files."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def list_source(index: int, source: DataSource) -> SourceFiles:
    fs, root = open_fs(source.uri)
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


@dataclass(frozen=True)
class Share:
    """The records one reader owns: of ``files``, every ``of``-th record from ``index``.

    The counter runs on across the files, so the indexed engine's worker i of W is
    ``Share(all files, i, W)`` and a Ray task's slice of one file is ``Share((f,), s, k)``.
    """

    files: tuple[tuple[int, int], ...]
    """(source, file) pairs, in corpus order."""
    index: int = 0
    of: int = 1
    input_bytes: int = 0
    """This share's part of the input bytes, for progress: summed over a plan's shares
    it is the corpus size."""


def corpus_files(sources: list[SourceFiles]) -> tuple[tuple[int, int], ...]:
    return tuple((s.index, f) for s in sources for f in range(len(s.paths)))


def plan_shares(sources: list[SourceFiles], target: int) -> list[Share]:
    """About ``target`` shares of the corpus: contiguous runs of files of similar total
    size when there are at least ``target`` files, else each file cut into slices."""
    by_index = {s.index: s for s in sources}
    files = corpus_files(sources)
    sizes = [by_index[s].sizes[f] for s, f in files]
    if len(files) < target:
        k = min(math.ceil(target / len(files)), MAX_SLICES_PER_FILE)
        return [
            Share((pair,), i, k, size * (i + 1) // k - size * i // k)
            for pair, size in zip(files, sizes, strict=True)
            for i in range(k)
        ]
    weight = sum(max(size, 1) for size in sizes)  # an empty file still costs a task
    shares: list[Share] = []
    group: list[tuple[int, int]] = []
    weighed = grouped = 0
    for pair, size in zip(files, sizes, strict=True):
        group.append(pair)
        weighed += max(size, 1)
        grouped += size
        if weighed * target >= weight * (len(shares) + 1):
            shares.append(Share(tuple(group), input_bytes=grouped))
            group, grouped = [], 0
    if group:
        shares.append(Share(tuple(group), input_bytes=grouped))
    return shares


@dataclass
class InvalidTally:
    """Invalid records of one source (in a reader's share, or all of them), and the first."""

    records: int = 0
    invalid: int = 0
    first: str = ""

    def add(self, record: Record) -> None:
        self.records += 1
        if record.text is None:
            self.invalid += 1
            if not self.first:
                self.first = record.problem


def check_invalid(source: SourceFiles, tally: InvalidTally) -> None:
    """A few invalid records are skipped and counted; this many mean a corrupt source."""
    if tally.invalid and tally.invalid > MAX_INVALID_FRACTION * tally.records:
        raise BadInputError(
            "CorruptInput",
            f"sources[{source.index}] {source.spec.uri}: {tally.invalid} of {tally.records} "
            f"records are invalid (more than {MAX_INVALID_FRACTION:.0%}); first: {tally.first}",
        )


class _Counter:
    """The running record number across a share's files: decides who owns a record."""

    def __init__(self, index: int, of: int) -> None:
        self.index = index
        self.of = of
        self.value = 0

    def mine(self) -> bool:
        owned = self.value % self.of == self.index
        self.value += 1
        return owned


class _Scan:
    """How far into the current file a reader is, turned into byte deltas for ``report``."""

    def __init__(self, report: Scanned | None) -> None:
        self.report = report
        self.size = 0
        self.done = 0

    def start(self, size: int) -> None:
        self.size, self.done = size, 0

    def at(self, offset: int | None) -> None:
        if self.report is None or offset is None:
            return
        offset = min(offset, self.size)
        if offset > self.done:
            self.report(offset - self.done)
            self.done = offset

    def finish(self) -> None:
        self.at(self.size)


def _stored_offset(handle: Any) -> int | None:
    """Position in the file as stored: gzip's wrapped file, else the handle itself."""
    try:
        return int(getattr(handle, "fileobj", handle).tell())
    except (AttributeError, OSError, ValueError):
        return None


_Read = Iterator[tuple[int, str | None, str]]
"""(position, text or None, problem) per owned record of one file."""


def _jsonl(source: SourceFiles, file: int, counter: _Counter, scan: _Scan) -> _Read:
    path = source.paths[file]
    field_name = source.spec.text_field
    with source.fs.open(path, "rb", compression="infer") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no % _SCAN_REPORT_LINES == 0:
                scan.at(_stored_offset(handle))
            if not raw.strip() or not counter.mine():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
                yield line_no, None, f"{path}:{line_no}: not JSON ({exc})"
                continue
            text = record.get(field_name) if isinstance(record, dict) else None
            if not isinstance(text, str):
                yield line_no, None, f"{path}:{line_no}: no string field {field_name!r}"
                continue
            yield line_no, text, ""


def _parquet(source: SourceFiles, file: int, counter: _Counter, scan: _Scan) -> _Read:
    path = source.paths[file]
    field_name = source.spec.text_field
    with source.fs.open(path, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        if field_name not in parquet.schema_arrow.names:
            raise BadInputError(
                "InvalidInput",
                f"{path}: no column {field_name!r} (columns: {parquet.schema_arrow.names})",
            )
        rows = max(parquet.metadata.num_rows, 1)
        row = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field_name]):
            owned = [i for i in range(batch.num_rows) if counter.mine()]
            values = batch.column(0).take(pa.array(owned, pa.int64())).to_pylist()
            for i, value in zip(owned, values, strict=True):
                if not isinstance(value, str):
                    yield row + i, None, f"{path}: row {row + i}: {field_name!r} is not a string"
                    continue
                yield row + i, value, ""
            row += batch.num_rows
            scan.at(scan.size * row // rows)


def _text(source: SourceFiles, file: int, counter: _Counter, scan: _Scan) -> _Read:
    if not counter.mine():
        return
    path = source.paths[file]
    with source.fs.open(path, "rb", compression="infer") as handle:
        data = handle.read()
    try:
        yield 0, data.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        yield 0, None, f"{path}: not UTF-8 ({exc})"


def _utf8_size(text: str) -> int:
    """-1 for text JSON can hold but UTF-8 cannot (lone surrogates): not a document."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return -1


_READERS = {SourceFormat.JSONL: _jsonl, SourceFormat.PARQUET: _parquet, SourceFormat.TEXT: _text}


def _records(
    sources: dict[int, SourceFiles],
    files: tuple[tuple[int, int], ...],
    counter: _Counter,
    scan: _Scan,
) -> Iterator[Record]:
    for index, file in files:
        source = sources[index]
        scan.start(source.sizes[file])
        try:
            for position, text, problem in _READERS[source.spec.format](
                source, file, counter, scan
            ):
                size = _utf8_size(text) if text is not None else 0
                if size < 0:
                    why = f"{source.paths[file]} (record {position}): text with a lone surrogate"
                    yield Record(index, file, position, None, 0, why)
                    continue
                yield Record(index, file, position, text, size, problem)
        except _READ_ERRORS as exc:
            raise BadInputError(
                "UnreadableInput", f"sources[{index}]: {source.paths[file]}: {exc}"
            ) from exc
        scan.finish()


def read_records(
    sources: list[SourceFiles], share: Share, scanned: Scanned | None = None
) -> Iterator[Record]:
    """The records of ``share``, invalid ones included, in corpus order; no checks.

    Raises BadInputError only when a file cannot be decoded at all.
    """
    by_index = {s.index: s for s in sources}
    return _records(by_index, share.files, _Counter(share.index, share.of), _Scan(scanned))


def read_documents(
    sources: list[SourceFiles],
    worker: int,
    workers: int,
    stats: Stats,
    scanned: Scanned | None = None,
) -> Iterator[Document]:
    """This worker's documents, in corpus order; invalid ones only counted in ``stats``.

    Raises BadInputError when a file cannot be decoded at all or a source is mostly
    invalid, naming the file (and line or row) of the first bad record.
    """
    counter = _Counter(worker, workers)
    scan = _Scan(scanned)
    by_index = {s.index: s for s in sources}
    for source in sources:
        tally = InvalidTally()
        files = tuple((source.index, f) for f in range(len(source.paths)))
        for record in _records(by_index, files, counter, scan):
            tally.add(record)
            stats.count_read(record.source, record.size)
            if record.text is None:
                stats.remove(Reason.INVALID, 0)
                continue
            yield Document(record.source, record.file, record.position, record.text, record.size)
        check_invalid(source, tally)
