"""The operator's own Prometheus metrics: how much it asks of the API server, how its
reconciles go, what its resources are doing, and how canaries fare.

API requests per reconcile is the number that decides whether the operator scales to
thousands of resources; it is exported rather than logged so a benchmark, a dashboard
and an alert read the same figure. Handlers call the small functions below rather than
touching the collectors, so labels are spelled in one place and the series of a deleted
resource are removed in one place.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from modelsmith.api.canary import CanaryStage, CanaryStatus

API_REQUESTS = Counter(
    "modelsmith_api_requests_total", "Kubernetes API requests the operator made.", ["method"]
)
RECONCILES = Counter(
    "modelsmith_reconciles_total",
    "Reconciles run, by kind and outcome (ok, stale, temporary, permanent, error).",
    ["kind", "outcome"],
)
RECONCILE_ERRORS = Counter(
    "modelsmith_reconcile_errors_total",
    "Reconciles that failed (stale reads, retried at once, excluded), by kind, outcome "
    "and exception class.",
    ["kind", "outcome", "error"],
)
RECONCILE_SECONDS = Histogram(
    "modelsmith_reconcile_seconds",
    "Time spent in one reconcile, failed ones included.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RESOURCES = Gauge(
    "modelsmith_resources",
    "Resources the operator watches, by kind, namespace and status.phase "
    "(Unknown: not reconciled yet).",
    ["kind", "namespace", "phase"],
)
CANARY_WEIGHT = Gauge(
    "modelsmith_canary_weight",
    "Percent of an InferenceService's traffic sent to its canary revision (0: no rollout).",
    ["namespace", "name"],
)
CANARY_ANALYSES = Counter(
    "modelsmith_canary_analysis_total",
    "Canary check results, by check and verdict (Pass, Fail, Inconclusive).",
    ["namespace", "name", "check", "verdict"],
)
CANARY_CHECK_VALUE = Gauge(
    "modelsmith_canary_check_value",
    "The value a canary check's query returned at the last analysis.",
    ["namespace", "name", "check"],
)
CANARY_OUTCOMES = Counter(
    "modelsmith_canary_outcomes_total",
    "Rollouts finished, by outcome (promoted, rolled_back).",
    ["namespace", "name", "outcome"],
)

_OUTCOMES = {CanaryStage.PROMOTED: "promoted", CanaryStage.ROLLED_BACK: "rolled_back"}
UNKNOWN_PHASE = "Unknown"


def serve(port: int, addr: str = "0.0.0.0") -> Any:  # noqa: S104
    """Expose /metrics on ``port`` (0: do not serve); the HTTP server, or None."""
    if not port:
        return None
    server, _thread = start_http_server(port, addr=addr)
    return server


def _outcome(exc: BaseException, stale: tuple[type[BaseException], ...]) -> str:
    import kopf

    if isinstance(exc, stale):
        return "stale"
    if isinstance(exc, kopf.PermanentError):
        return "permanent"
    if isinstance(exc, kopf.TemporaryError):
        return "temporary"
    return "error"


@contextmanager
def reconcile_observed(kind: str, stale: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Time the block and count it under the outcome its exception (if any) implies.

    ``stale``: exception classes that mean "read again", not a failure.
    """
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except BaseException as exc:
        outcome = _outcome(exc, stale)
        if outcome != "stale":
            RECONCILE_ERRORS.labels(kind, outcome, type(exc).__name__).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        RECONCILES.labels(kind, outcome).inc()


class _Phases:
    """uid -> (kind, namespace, phase), and the counts the gauge shows.

    Each resource counts once, under its latest phase, so a phase move or a delete
    changes two counts by one and none can go negative; a count that reaches zero
    removes its series rather than leaving a 0 for a namespace long gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_uid: dict[str, tuple[str, str, str]] = {}
        self._counts: Tally[tuple[str, str, str]] = Tally()

    def _drop(self, key: tuple[str, str, str]) -> None:
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]
            RESOURCES.remove(*key)
        else:
            RESOURCES.labels(*key).set(self._counts[key])

    def observe(self, kind: str, namespace: str, uid: str, phase: str | None) -> None:
        key = (kind, namespace, phase or UNKNOWN_PHASE)
        with self._lock:
            old = self._by_uid.get(uid)
            if old == key:
                return
            if old is not None:
                self._drop(old)
            self._by_uid[uid] = key
            self._counts[key] += 1
            RESOURCES.labels(*key).set(self._counts[key])

    def forget(self, uid: str) -> None:
        with self._lock:
            old = self._by_uid.pop(uid, None)
            if old is not None:
                self._drop(old)


_PHASES = _Phases()


def observe_phase(kind: str, namespace: str, uid: str, phase: str | None) -> None:
    """The resource ``uid`` is now in ``phase`` (None: no status yet)."""
    _PHASES.observe(kind, namespace, uid, phase)


def forget_resource(uid: str) -> None:
    """The resource is gone: it no longer counts in any phase."""
    _PHASES.forget(uid)


_CHECKS: dict[tuple[str, str], set[str]] = {}
_CHECKS_LOCK = threading.Lock()


def set_canary_weight(namespace: str, name: str, weight: int | None) -> None:
    CANARY_WEIGHT.labels(namespace, name).set(weight or 0)


def observe_canary(
    namespace: str,
    name: str,
    before: CanaryStatus | None,
    after: CanaryStatus | None,
    now: datetime,
) -> None:
    """Count what one reconcile did to a rollout, once its status is written: the
    analysis it ran (``after.last_analysis == now``) and the outcome it reached."""
    if after is None:
        return
    if after.last_analysis == now and after.checks:
        names = {c.name for c in after.checks}
        with _CHECKS_LOCK:
            for gone in _CHECKS.get((namespace, name), set()) - names:
                CANARY_CHECK_VALUE.remove(namespace, name, gone)
            _CHECKS[(namespace, name)] = names
        for check in after.checks:
            CANARY_ANALYSES.labels(namespace, name, check.name, check.verdict).inc()
            if check.value is None:
                CANARY_CHECK_VALUE.remove(namespace, name, check.name)
            else:
                CANARY_CHECK_VALUE.labels(namespace, name, check.name).set(check.value)
    outcome = _OUTCOMES.get(after.stage)
    unchanged = (
        before is not None and before.revision == after.revision and before.stage == after.stage
    )
    if outcome is not None and not unchanged:
        CANARY_OUTCOMES.labels(namespace, name, outcome).inc()


def forget_canary(namespace: str, name: str) -> None:
    """Remove every canary series of a deleted InferenceService."""
    match = {"namespace": namespace, "name": name}
    for metric in (CANARY_WEIGHT, CANARY_ANALYSES, CANARY_CHECK_VALUE, CANARY_OUTCOMES):
        metric.remove_by_labels(match)
    with _CHECKS_LOCK:
        _CHECKS.pop((namespace, name), None)
