"""The operator's /metrics, scraped over HTTP while it reconciles against the real
control plane: what Prometheus (and the dashboard in deploy/grafana) would read."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from modelsmith import metrics
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

GROUP_ARGS = ("modelsmith.io", "v1alpha1")


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """The operator's own endpoint (`metrics.serve`, as `modelsmith run --metrics-port`
    starts it), on a free loopback port: kopf's in-process runner starts none."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = metrics.serve(port, addr="127.0.0.1")
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()


def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (our loopback URL)
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sample(scraped: dict[Any, float], metric: str, /, **labels: str) -> float | None:
    return scraped.get((metric, frozenset(labels.items())))


def _phase(namespace: str, name: str) -> str | None:
    obj = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP_ARGS, namespace, "datapipelines", name
    )
    phase: str | None = obj.get("status", {}).get("phase")
    return phase


def test_reconciles_and_resources_by_phase_show_on_the_metrics_endpoint(
    operator: KopfRunner, namespace: str, metrics_url: str
) -> None:
    ok = {"kind": "DataPipeline", "outcome": "ok"}
    before = _sample(_scrape(metrics_url), "modelsmith_reconciles_total", **ok) or 0.0
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": "corpus"},
        "spec": {
            "sources": [{"uri": "/data/raw", "format": "text"}],
            "output": {"uri": "/data/shards"},
        },
    }
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(*GROUP_ARGS, namespace, "datapipelines", body)
    wait_for(lambda: _phase(namespace, "corpus") == "Succeeded", timeout=90, what="Succeeded")

    by_phase = {"kind": "DataPipeline", "namespace": namespace}

    def counted_as_succeeded() -> dict[Any, float] | None:
        scraped = _scrape(metrics_url)
        done = _sample(scraped, "modelsmith_resources", **by_phase, phase="Succeeded") == 1
        return scraped if done else None

    scraped = wait_for(counted_as_succeeded, timeout=30, what="resources{phase=Succeeded} 1")
    after = _sample(scraped, "modelsmith_reconciles_total", **ok) or 0.0
    # Created, then the Job's start and its completion: at least two reconciles.
    assert after - before >= 2
    assert _sample(scraped, "modelsmith_reconcile_seconds_count", kind="DataPipeline")
    for phase in ("Unknown", "Pending", "Running", "Failed"):
        assert _sample(scraped, "modelsmith_resources", **by_phase, phase=phase) is None, phase

    api.delete_namespaced_custom_object(*GROUP_ARGS, namespace, "datapipelines", "corpus")
    wait_for(
        lambda: (
            not any(
                name == "modelsmith_resources" and ("namespace", namespace) in labels
                for name, labels in _scrape(metrics_url)
            )
        ),
        timeout=30,
        what="no modelsmith_resources series for the deleted pipeline's namespace",
    )


def _serving(namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP_ARGS, namespace, "inferenceservices", "chat"
    )
    status: dict[str, Any] = obj.get("status") or {}
    return status


def test_canary_weight_and_outcome_show_on_the_metrics_endpoint(
    operator: KopfRunner, namespace: str, metrics_url: str
) -> None:
    api = client.CustomObjectsApi()
    canary = {
        "steps": [20, 60],
        "maxWeight": 60,
        "interval": "10m",
        "analysisInterval": "1m",
        "metrics": [],
    }
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": {
            "model": {"uri": "file:///models/v1"},
            "resources": {"cpu": "100m"},
            "canary": canary,
        },
    }
    api.create_namespaced_custom_object(*GROUP_ARGS, namespace, "inferenceservices", body)
    wait_for(lambda: _serving(namespace).get("phase") == "Ready", timeout=60, what="Ready")
    patch = {"spec": {"model": {"uri": "file:///models/v2"}}}
    api.patch_namespaced_custom_object(*GROUP_ARGS, namespace, "inferenceservices", "chat", patch)
    wait_for(lambda: _serving(namespace).get("canaryWeight") == 20, timeout=60, what="canary 20%")

    chat = {"namespace": namespace, "name": "chat"}
    serving = {"kind": "InferenceService", "namespace": namespace}

    def shows(metric: str, value: float, /, **labels: str) -> bool:
        return _sample(_scrape(metrics_url), metric, **labels) == value

    wait_for(lambda: shows("modelsmith_canary_weight", 20, **chat), timeout=30, what="weight 20")
    wait_for(
        lambda: shows("modelsmith_resources", 1, **serving, phase="Progressing"),
        timeout=30,
        what="one InferenceService Progressing",
    )

    abort = {"metadata": {"annotations": {"modelsmith.io/canary-decision": "Abort"}}}
    api.patch_namespaced_custom_object(*GROUP_ARGS, namespace, "inferenceservices", "chat", abort)
    wait_for(lambda: _serving(namespace).get("phase") == "Degraded", timeout=30, what="rollback")
    wait_for(lambda: shows("modelsmith_canary_weight", 0, **chat), timeout=30, what="weight 0")
    scraped = _scrape(metrics_url)
    assert _sample(scraped, "modelsmith_canary_outcomes_total", **chat, outcome="rolled_back") == 1
    assert _sample(scraped, "modelsmith_canary_outcomes_total", **chat, outcome="promoted") is None
    assert _sample(scraped, "modelsmith_resources", **serving, phase="Degraded") == 1
    assert _sample(scraped, "modelsmith_resources", **serving, phase="Progressing") is None

    api.delete_namespaced_custom_object(*GROUP_ARGS, namespace, "inferenceservices", "chat")
    wait_for(
        lambda: (
            not any(
                ("namespace", namespace) in labels
                for name, labels in _scrape(metrics_url)
                if name.startswith(("modelsmith_canary_", "modelsmith_resources"))
            )
        ),
        timeout=30,
        what="no canary or resources series left for the deleted InferenceService",
    )
