"""``engine: ray``: the map half of the pipeline as a Ray Data job over the run's pods.

The run's pods form a Ray cluster (`raycluster`) and this code runs once, on pod 0,
as the driver. The corpus is cut into shares (`readers.plan_shares`, a few per CPU
of the cluster); a Ray Data `map_batches` task reads each share with the indexed
engine's readers, and a second one, fused into the same task, normalizes, filters,
hashes and signs its documents with the same `pipeline.Cleaner` and `dedup` code. So
the CPU-heavy part spreads over every node, and a document comes out exactly as the
indexed engine makes it.

The driver folds the rows into one ledger as they stream back, and keeps what passed
the filters, sorted by key into corpus order. From there the indexed engine's reduce
takes over unchanged (exact and near dedup, tokenizer, packing, publish): same input
and seed, same dataset. Three things run on the driver: the corrupt-source check and
the progress, which need every record (the share of invalid records, and the first
one in corpus order), and the perplexity filter, whose reference model is a local
directory on pod 0 only (downloaded there when it lives in object storage).

The Ray temp and spill directories are Ray's own (/tmp/ray on every node); nothing
of Ray's goes near the output, which only `storage.publish` writes.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from modelsmith.api.datapipeline import DataPipelineSpec
from modelsmith_runtime import raycluster
from modelsmith_runtime.data.dedup import exact_key
from modelsmith_runtime.data.parts import Part
from modelsmith_runtime.data.pipeline import Cleaner, sign, signature_width
from modelsmith_runtime.data.readers import (
    InvalidTally,
    Share,
    SourceFiles,
    check_invalid,
    plan_shares,
    read_records,
)
from modelsmith_runtime.data.stats import Reason, Stats
from modelsmith_runtime.data.telemetry import Telemetry
from modelsmith_runtime.errors import BadInputError, TransientError

log = logging.getLogger(__name__)

SHARES_PER_CPU = 4
"""More shares than CPUs, so a slow share does not leave the others idle at the end."""
RECORDS_PER_BLOCK = 1024
"""Records per block out of the read stage: also the batch the clean stage gets."""

_RECORDS = pa.schema(
    [
        ("source", pa.int64()),
        ("file", pa.int64()),
        ("position", pa.int64()),
        ("size", pa.int64()),
        ("text", pa.large_string()),
        ("problem", pa.string()),
        ("scanned", pa.int64()),
    ]
)
"""What the read stage emits: one row per record, invalid ones (text null) included,
and per share one end row (source -1) carrying the input bytes it got through."""
_CLEANED = pa.schema(
    [
        ("source", pa.int64()),
        ("file", pa.int64()),
        ("position", pa.int64()),
        ("size", pa.int64()),
        ("reason", pa.string()),
        ("problem", pa.string()),
        ("text", pa.large_string()),
        ("hash", pa.binary()),
        ("signature", pa.binary()),
        ("scanned", pa.int64()),
    ]
)
"""What reaches the driver: the reason a record was removed ("" when kept), and text,
hash and near-dedup signature (MinHash or SimHash) only for the kept ones."""


class _CarriedError(Exception):
    """A BadInputError or TransientError raised in a Ray task, in a form Ray can ship.

    pickle rebuilds an exception as ``cls(*args)``: those two take (reason, message)
    but hold only the message in args, and Ray Data appends its retry note to the
    args of a failed task's exception, so neither comes back on the driver as raised.
    This one rebuilds from its own fields whatever was appended.
    """

    def __init__(self, transient: bool, reason: str, message: str) -> None:
        super().__init__(transient, reason, message)
        self.transient, self.reason, self.message = transient, reason, message

    def __reduce__(self) -> tuple[type[_CarriedError], tuple[bool, str, str]]:
        return (type(self), (self.transient, self.reason, self.message))

    def original(self) -> BadInputError | TransientError:
        if self.transient:
            return TransientError(self.reason, self.message)
        return BadInputError(self.reason, self.message)


def unwrap_task_error(error: BaseException) -> BadInputError | TransientError | None:
    """The pipeline's own error inside Ray's wrappers (RayTaskError, UserCodeException)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (BadInputError, TransientError)):
            return current
        if isinstance(current, _CarriedError) and hasattr(current, "reason"):
            return current.original()
        for inner in (current.__context__, current.__cause__, getattr(current, "cause", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)
    return None


def _record_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, _RECORDS, strict=True)], schema=_RECORDS
    )


def _read(batch: pa.Table, sources: list[SourceFiles], shares: list[Share]) -> Iterator[pa.Table]:
    try:
        for share_id in batch.column("share").to_pylist():
            share = shares[share_id]
            rows: list[tuple[Any, ...]] = []
            for r in read_records(sources, share):
                rows.append((r.source, r.file, r.position, r.size, r.text, r.problem, 0))
                if len(rows) == RECORDS_PER_BLOCK:
                    yield _record_table(rows)
                    rows = []
            rows.append((-1, 0, 0, 0, None, "", share.input_bytes))
            yield _record_table(rows)
    except BadInputError as exc:
        raise _CarriedError(False, exc.reason, exc.message) from None
    except TransientError as exc:
        raise _CarriedError(True, exc.reason, exc.message) from None


def _clean(batch: pa.Table, spec: DataPipelineSpec) -> pa.Table:
    cleaner = Cleaner(spec)
    reasons: list[str] = []
    texts: list[str | None] = []
    for source, text in zip(
        batch.column("source").to_pylist(), batch.column("text").to_pylist(), strict=True
    ):
        if text is None:
            reasons.append(Reason.INVALID.value if source >= 0 else "")
            texts.append(None)
            continue
        cleaned, reason = cleaner.clean(text)
        reasons.append(reason.value if reason is not None else "")
        texts.append(cleaned if reason is None else None)
    kept = [t for t in texts if t is not None]
    hashes: list[bytes | None] = [exact_key(t) if t is not None else None for t in texts]
    sigs: list[bytes | None] = [None] * len(texts)
    signed = sign(kept, spec.dedup) if kept else None
    if signed is not None:
        rows = iter(signed)
        sigs = [next(rows).tobytes() if t is not None else None for t in texts]
    columns = {
        "source": batch.column("source"),
        "file": batch.column("file"),
        "position": batch.column("position"),
        "size": batch.column("size"),
        "reason": pa.array(reasons, pa.string()),
        "problem": batch.column("problem"),
        "text": pa.array(texts, pa.large_string()),
        "hash": pa.array(hashes, pa.binary()),
        "signature": pa.array(sigs, pa.binary()),
        "scanned": batch.column("scanned"),
    }
    return pa.table(columns, schema=_CLEANED)


class _Gathered:
    """The driver's fold of the cleaned rows: the ledger, and the documents kept so far."""

    def __init__(self, sources: list[SourceFiles], width: int | None) -> None:
        self.sources = sources
        self.width = width
        """uint32 columns of a signature; None when near dedup is off."""
        self.stats = Stats()
        self.tallies = {s.index: InvalidTally() for s in sources}
        self.first_invalid: dict[int, tuple[tuple[int, int, int], str]] = {}
        self.keys: list[tuple[int, int, int]] = []
        self.texts: list[str] = []
        self.sizes: list[int] = []
        self.hashes: list[bytes] = []
        self.signatures: list[bytes] = []

    def add(self, batch: pa.Table, telemetry: Telemetry) -> None:
        rows = batch.to_pydict()
        for i, source in enumerate(rows["source"]):
            if source < 0:
                telemetry.scanned(rows["scanned"][i])
                continue
            key = (source, rows["file"][i], rows["position"][i])
            size, reason = rows["size"][i], rows["reason"][i]
            self.stats.count_read(source, size)
            tally = self.tallies[source]
            tally.records += 1
            if reason == Reason.INVALID:
                self.stats.remove(Reason.INVALID, 0)
                tally.invalid += 1
                first = self.first_invalid.get(source)
                if first is None or key < first[0]:
                    self.first_invalid[source] = (key, rows["problem"][i])
            elif reason:
                self.stats.remove(Reason(reason), size)
            else:
                self.keys.append(key)
                self.texts.append(rows["text"][i])
                self.sizes.append(size)
                self.hashes.append(rows["hash"][i])
                if self.width is not None:
                    self.signatures.append(rows["signature"][i])

    def part(self) -> Part:
        """Everything that passed the filters, in corpus order; CorruptInput first if a
        source is mostly invalid, named by its first bad record as the indexed engine does."""
        for source in self.sources:
            tally = self.tallies[source.index]
            if source.index in self.first_invalid:
                tally.first = self.first_invalid[source.index][1]
            check_invalid(source, tally)
        keys = np.asarray(self.keys, dtype=np.int64).reshape(-1, 3)
        order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0])).tolist()
        sigs = None
        if self.width is not None:
            raw = b"".join(self.signatures[i] for i in order)
            sigs = np.frombuffer(raw, dtype=np.uint32).reshape(-1, self.width).copy()
        return Part(
            keys=keys[order].reshape(-1, 3),
            texts=[self.texts[i] for i in order],
            sizes=np.asarray(self.sizes, dtype=np.int64)[order],
            hashes=[self.hashes[i] for i in order],
            signatures=sigs,
            stats=self.stats,
        )


def _quiet(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # pod logs are not a terminal
    context.enable_auto_log_stats = False


def map_on_ray(spec: DataPipelineSpec, sources: list[SourceFiles], telemetry: Telemetry) -> Part:
    """Read, clean and sign the whole corpus on the Ray cluster; the filter survivors.

    The returned part's stats are the ledger of the read and the filters; duplicates
    are not yet removed (the reduce does that, as for the indexed engine).
    """
    Cleaner(spec)  # a bad blocklist regex fails here, before Ray starts
    gathered = _Gathered(sources, signature_width(spec.dedup))
    telemetry.watch(gathered.stats)
    with raycluster.connect() as ray:
        try:
            importlib.import_module("ray.data")  # ray[data] is an extra of its own
        except ImportError as exc:
            raise BadInputError(
                "Unsupported", f"engine ray needs Ray Data (ray[data]): {exc}"
            ) from exc
        _quiet(ray)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shares = plan_shares(sources, SHARES_PER_CPU * cpus)
        log.info("ray: %d shares of the corpus over %d CPUs", len(shares), cpus)
        dataset = (
            ray.data.from_items(
                [{"share": i} for i in range(len(shares))], override_num_blocks=len(shares)
            )
            .map_batches(
                _read,
                batch_size=1,
                batch_format="pyarrow",
                fn_kwargs={"sources": sources, "shares": shares},
                num_cpus=1,
            )
            .map_batches(
                _clean,
                batch_size=None,  # the read's blocks as they come: a batch size would
                # make Ray Data bundle several shares into one task to fill it
                batch_format="pyarrow",
                fn_kwargs={"spec": spec},
                num_cpus=1,
            )
        )
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                gathered.add(batch, telemetry)
        except Exception as exc:
            ours = unwrap_task_error(exc)
            if ours is None:
                raise
            raise ours from None
    part = gathered.part()
    log.info("ray: %d documents read, %d pass", gathered.stats.read.documents, len(part.texts))
    return part
