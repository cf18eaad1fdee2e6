"""The operator's metric bookkeeping: outcomes, phase counts, canary series.

Read back through prometheus_client's default registry, as /metrics would show them.
Every test uses a namespace of its own: the registry is shared by the whole process.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta

import kopf
import pytest
from prometheus_client import REGISTRY

from modelsmith import metrics
from modelsmith.api.canary import CanaryStage, Decision
from modelsmith.api.inference import InferenceServiceSpec
from modelsmith.api.inference import InferenceServiceStatus as Status
from modelsmith.builders.revision import revision_name
from modelsmith.canary.rollout import Inputs, Plan, plan

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _ns() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


def _value(metric: str, /, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def _resources(kind: str, ns: str, phase: str) -> float | None:
    return _value("modelsmith_resources", kind=kind, namespace=ns, phase=phase)


class StaleError(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (StaleError("moved"), "stale"),
        (kopf.TemporaryError("later", delay=1), "temporary"),
        (kopf.PermanentError("invalid spec"), "permanent"),
        (RuntimeError("boom"), "error"),
    ],
)
def test_every_reconcile_is_counted_and_timed_under_its_outcome(
    exc: Exception | None, outcome: str
) -> None:
    kind = f"Kind{uuid.uuid4().hex[:6]}"
    expect: AbstractContextManager[object] = pytest.raises(type(exc)) if exc else nullcontext()
    with expect, metrics.reconcile_observed(kind, stale=(StaleError,)):
        if exc is not None:
            raise exc
    assert _value("modelsmith_reconciles_total", kind=kind, outcome=outcome) == 1
    assert _value("modelsmith_reconcile_seconds_count", kind=kind) == 1
    errors = _value(
        "modelsmith_reconcile_errors_total",
        kind=kind,
        outcome=outcome,
        error=type(exc).__name__,
    )
    # A stale read is retried at once from a fresh read: not an error.
    assert errors == (1 if outcome not in ("ok", "stale") else None)


def test_a_resource_counts_once_under_its_latest_phase() -> None:
    ns, a, b = _ns(), uuid.uuid4().hex, uuid.uuid4().hex
    metrics.observe_phase("FineTune", ns, a, None)
    assert _resources("FineTune", ns, "Unknown") == 1
    metrics.observe_phase("FineTune", ns, a, "Pending")
    metrics.observe_phase("FineTune", ns, b, "Pending")
    metrics.observe_phase("FineTune", ns, b, "Pending")  # the same event twice
    assert _resources("FineTune", ns, "Unknown") is None
    assert _resources("FineTune", ns, "Pending") == 2
    metrics.observe_phase("FineTune", ns, a, "Running")
    metrics.observe_phase("FineTune", ns, a, "Succeeded")
    assert _resources("FineTune", ns, "Pending") == 1
    assert _resources("FineTune", ns, "Running") is None
    assert _resources("FineTune", ns, "Succeeded") == 1


def test_a_deleted_resource_leaves_no_series_and_a_second_delete_changes_nothing() -> None:
    ns, a, b = _ns(), uuid.uuid4().hex, uuid.uuid4().hex
    metrics.observe_phase("DataPipeline", ns, a, "Failed")
    metrics.observe_phase("DataPipeline", ns, b, "Failed")
    metrics.forget_resource(a)
    assert _resources("DataPipeline", ns, "Failed") == 1
    metrics.forget_resource(b)
    metrics.forget_resource(b)
    assert _resources("DataPipeline", ns, "Failed") is None
    exported = {
        s.labels["namespace"]
        for m in REGISTRY.collect()
        if m.name == "modelsmith_resources"
        for s in m.samples
    }
    assert ns not in exported


def test_kinds_and_namespaces_count_apart() -> None:
    ns, other = _ns(), _ns()
    metrics.observe_phase("FineTune", ns, uuid.uuid4().hex, "Running")
    metrics.observe_phase("PretrainJob", ns, uuid.uuid4().hex, "Running")
    metrics.observe_phase("FineTune", other, uuid.uuid4().hex, "Running")
    assert _resources("FineTune", ns, "Running") == 1
    assert _resources("PretrainJob", ns, "Running") == 1
    assert _resources("FineTune", other, "Running") == 1


def test_canary_weight_is_set_zero_without_a_rollout_and_gone_with_the_service() -> None:
    ns = _ns()
    metrics.set_canary_weight(ns, "chat", 20)
    assert _value("modelsmith_canary_weight", namespace=ns, name="chat") == 20
    metrics.set_canary_weight(ns, "chat", None)
    assert _value("modelsmith_canary_weight", namespace=ns, name="chat") == 0
    metrics.forget_canary(ns, "chat")
    assert _value("modelsmith_canary_weight", namespace=ns, name="chat") is None


def _spec(model: str, failure_limit: int = 1) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {
            "model": {"uri": model},
            "canary": {
                "steps": [20, 50],
                "interval": "1m",
                "analysisInterval": "20s",
                "failureLimit": failure_limit,
                "metrics": [{"name": "errors", "builtin": "error-rate", "max": 0.05}],
            },
        }
    )


def _rollout(ns: str, samples: dict[str, float | None], seconds: int) -> tuple[Plan, int]:
    """v1 deployed, then v2 canaried against ``samples``, every reconcile observed as the
    handler does; (last plan, analyses run)."""
    v1_spec, spec = _spec("file:///models/v1"), _spec("file:///models/v2")
    v1 = revision_name("chat", v1_spec, "file:///models/v1")
    v2 = revision_name("chat", spec, "file:///models/v2")
    status = plan(Inputs(v1_spec, v1, "x", {v1: True}, {}, {}, Decision.AUTO, T0, 1), Status())
    analyses = 0
    p = status
    for t in range(0, seconds, 10):
        now = T0 + timedelta(seconds=t)
        before = p.status
        inputs = Inputs(spec, v2, "y", {v1: True, v2: True}, samples, {}, Decision.AUTO, now, 2)
        p = plan(inputs, before)
        after = p.status.canary
        analyses += bool(after and after.last_analysis == now and after.checks)
        metrics.observe_canary(ns, "chat", before.canary, after, now)
    return p, analyses


def test_analyses_and_a_promotion_are_counted_once_each() -> None:
    ns = _ns()
    p, analyses = _rollout(ns, {"errors": 0.0}, seconds=300)
    assert p.status.canary and p.status.canary.stage == CanaryStage.PROMOTED
    assert analyses >= 2
    labels = {"namespace": ns, "name": "chat", "check": "errors"}
    assert _value("modelsmith_canary_analysis_total", **labels, verdict="Pass") == analyses
    assert _value("modelsmith_canary_analysis_total", **labels, verdict="Fail") is None
    assert _value("modelsmith_canary_check_value", **labels) == 0.0
    # Reconciles after the promotion (the loop ran on for minutes) count nothing more.
    outcome = {"namespace": ns, "name": "chat"}
    assert _value("modelsmith_canary_outcomes_total", **outcome, outcome="promoted") == 1
    assert _value("modelsmith_canary_outcomes_total", **outcome, outcome="rolled_back") is None


def test_a_failing_canary_counts_its_failed_checks_and_one_rollback() -> None:
    ns = _ns()
    p, analyses = _rollout(ns, {"errors": 0.5}, seconds=200)
    assert p.status.canary and p.status.canary.stage == CanaryStage.ROLLED_BACK
    labels = {"namespace": ns, "name": "chat", "check": "errors"}
    assert _value("modelsmith_canary_analysis_total", **labels, verdict="Fail") == analyses == 2
    assert _value("modelsmith_canary_check_value", **labels) == 0.5
    outcome = {"namespace": ns, "name": "chat", "outcome": "rolled_back"}
    assert _value("modelsmith_canary_outcomes_total", **outcome) == 1
    metrics.forget_canary(ns, "chat")
    assert _value("modelsmith_canary_analysis_total", **labels, verdict="Fail") is None
    assert _value("modelsmith_canary_check_value", **labels) is None
    assert _value("modelsmith_canary_outcomes_total", **outcome) is None
