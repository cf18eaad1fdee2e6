"""What a running data pipeline tells the outside: Prometheus metrics and progress.

Like the trainer (`train.metrics`), a run serves Prometheus metrics when
MODELSMITH_METRICS_PORT names a port, and reports progress to the operator's status
endpoint (`progress.ProgressReporter`), so `kubectl get dp` shows step, total and ETA.

The document counts are read from the run's own ledgers (`stats.Stats`) when
Prometheus scrapes, not mirrored into counters as they change, so the metrics cannot
drift from report.json. Each process exposes what it did itself: an indexed worker its
slice, worker 0 also the dedup it did, the Ray driver everything. Summed over pods,
that is the run's total, whatever the engine.

Progress is in input bytes, as stored: the file sizes are known once the sources are
listed, while the number of documents is known only once they are all read. It tracks
the read-and-clean phase; the dedup, tokenizer and packing that follow show as
step == total, with the tokens counter moving. Only one process per run reports
(worker 0, or the Ray driver): the status holds one progress, and workers would
overwrite each other's.

MODELSMITH_METRICS_LINGER_S keeps the endpoint up that many seconds after the run, so a
scrape interval longer than a short run still catches its final counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

from modelsmith_runtime.data.stats import Stats
from modelsmith_runtime.gauges import start_server, stop_server
from modelsmith_runtime.progress import ProgressReporter

PREFIX = "modelsmith_data_"


class Telemetry:
    """One run's live counts; a context manager that serves them while the run lasts."""

    def __init__(self, *, reports_progress: bool) -> None:
        self.input_bytes = 0
        self.scanned_bytes = 0
        self.kept_documents = 0
        self.tokens = 0
        self._ledgers: tuple[Stats, ...] = ()
        self._reporter = ProgressReporter() if reports_progress else None
        self._server = start_server(lambda registry: registry.register(_LedgerCollector(self)))

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is None:  # every input byte went through, whether this process read it
            self.scanned_bytes = max(self.scanned_bytes, self.input_bytes)
            self._report(force=True)
        stop_server(self._server)

    def watch(self, *ledgers: Stats) -> None:
        """Count from these ledgers from now on (they keep changing; they are not copied)."""
        self._ledgers = ledgers

    def begin(self, input_bytes: int) -> None:
        self.input_bytes = input_bytes
        self._report(force=True)

    def scanned(self, size: int) -> None:
        self.scanned_bytes += size
        self._report()

    def kept(self, documents: int) -> None:
        self.kept_documents = documents

    def tokenized(self, tokens: int) -> None:
        self.tokens += tokens

    def snapshot(self) -> Stats:
        total = Stats()
        for ledger in self._ledgers:
            # to_json copies the dicts in one C call each, so a scrape never iterates
            # a dict the pipeline thread is growing.
            total.merge(Stats.from_json(ledger.to_json()))
        return total

    def _report(self, *, force: bool = False) -> None:
        if self._reporter is None:
            return
        total = self.input_bytes or None
        step = min(self.scanned_bytes, total) if total else self.scanned_bytes
        self._reporter.report(step, total, force=force)


class _LedgerCollector:
    """prometheus_client custom collector: reads the telemetry at each scrape."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        t = self.telemetry
        stats = t.snapshot()
        yield CounterMetricFamily(
            f"{PREFIX}documents_read",
            "Records read, invalid ones included.",
            value=stats.read.documents,
        )
        yield CounterMetricFamily(
            f"{PREFIX}bytes_read", "UTF-8 bytes of the documents read.", value=stats.read.bytes
        )
        documents = CounterMetricFamily(
            f"{PREFIX}documents_removed", "Documents removed, by reason.", labels=["reason"]
        )
        size = CounterMetricFamily(
            f"{PREFIX}bytes_removed", "UTF-8 bytes of removed documents.", labels=["reason"]
        )
        for reason, tally in sorted(stats.removed.items()):
            documents.add_metric([reason.value], tally.documents)
            size.add_metric([reason.value], tally.bytes)
        yield documents
        yield size
        yield GaugeMetricFamily(
            f"{PREFIX}documents_kept",
            "Documents left after dedup (0 until the dedup is done).",
            value=t.kept_documents,
        )
        yield CounterMetricFamily(
            f"{PREFIX}tokens", "Tokens packed, end-of-text tokens included.", value=t.tokens
        )
        yield GaugeMetricFamily(
            f"{PREFIX}input_bytes", "Bytes of the input files, as stored.", value=t.input_bytes
        )
        yield GaugeMetricFamily(
            f"{PREFIX}input_bytes_scanned",
            "Input bytes read so far: the progress of the read-and-clean phase.",
            value=t.scanned_bytes,
        )
