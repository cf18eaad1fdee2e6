"""The router's Prometheus series: the names the canary's built-in PromQL reads.

`canary.decision.BUILTIN_QUERIES` sums these by revision, so the `shadow` label (copies
sent by mirroring) adds series without breaking a query; during a shadow phase the
canary's error rate and latency are exactly those of the mirrored copies. Children are
bound once per revision and cached, because `labels()` on the hot path costs more than
the observation itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
"""From a cached reply (ms) to a long generation (a minute); the canary reads p99."""

_REVISION = ("namespace", "service", "revision")
WARM_CODES = (200, 500, 502, 503, 504)
"""Exported at 0 as soon as a revision is routed: Prometheus counts no increase in a
series' first sample, so without these a canary's first burst of errors would not show
in its error rate."""


class RouterMetrics:
    """A registry of its own, so /metrics shows the router and nothing imported."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelsmith_router_requests_total",
            "Requests answered, by revision and HTTP status (502/504: upstream failed).",
            [*_REVISION, "code", "shadow"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "modelsmith_router_request_duration_seconds",
            "Time from the request's arrival to the end of the response body.",
            [*_REVISION, "shadow"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "modelsmith_router_time_to_first_token_seconds",
            "Time from the request's arrival to the first chunk of the response body.",
            [*_REVISION, "shadow"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "modelsmith_router_in_flight_requests",
            "Requests sent to a revision and not yet answered.",
            [*_REVISION, "shadow"],
            registry=self.registry,
        )
        self.mirror_dropped = Counter(
            "modelsmith_router_mirror_dropped_total",
            "Mirrored copies not sent because too many copies were already in flight.",
            list(_REVISION),
            registry=self.registry,
        )
        self.table_updates = Counter(
            "modelsmith_router_table_updates_total",
            "Route tables received, by outcome (applied, invalid).",
            ["outcome"],
            registry=self.registry,
        )

    def forget(self, namespace: str, service: str, revision: str) -> None:
        """Drop a removed revision's series, so rollout after rollout does not pile up."""
        labels = {"namespace": namespace, "service": service, "revision": revision}
        for metric in (self.requests, self.duration, self.ttft, self.in_flight):
            metric.remove_by_labels(labels)
        self.mirror_dropped.remove_by_labels(labels)


class RevisionSeries:
    """One revision's children for one value of `shadow`, bound once per table."""

    __slots__ = ("_codes", "_flag", "_labels", "_requests", "duration", "in_flight", "ttft")

    def __init__(
        self,
        metrics: RouterMetrics,
        labels: tuple[str, str, str],
        *,
        shadow: bool,
        warm: bool,
    ) -> None:
        namespace, service, revision = labels
        self._flag = "true" if shadow else "false"
        self._labels = labels
        self._requests = metrics.requests
        self._codes: dict[int, Counter] = {}
        if warm:
            for code in WARM_CODES:
                self._codes[code] = metrics.requests.labels(*labels, str(code), self._flag)
        self.duration = metrics.duration.labels(namespace, service, revision, self._flag)
        self.ttft = metrics.ttft.labels(namespace, service, revision, self._flag)
        self.in_flight = metrics.in_flight.labels(namespace, service, revision, self._flag)

    def record(self, code: int, started: float, ended: float, first_chunk: float | None) -> None:
        counter = self._codes.get(code)
        if counter is None:
            counter = self._requests.labels(*self._labels, str(code), self._flag)
            self._codes[code] = counter
        counter.inc()
        self.duration.observe(ended - started)
        if first_chunk is not None:
            self.ttft.observe(first_chunk - started)
