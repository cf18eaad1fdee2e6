"""The canary's view of Prometheus, against a real one (Debian's package) on loopback."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from modelsmith.canary import promql
from modelsmith.devcluster import prometheus
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_values_empty_results_and_an_unreachable_server_are_told_apart() -> None:
    registry = CollectorRegistry()
    latency = Gauge("demo_latency_seconds", "p99", ["revision"], registry=registry)
    latency.labels(revision="canary").set(0.25)
    requests = Counter("demo_requests", "requests", ["code"], registry=registry)
    requests.labels(code="200").inc(3)
    requests.labels(code="500").inc(1)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    target = f"127.0.0.1:{server.server_address[1]}"
    try:
        with prometheus.serve([(target, {"service": "chat"})], interval="1s") as prom:
            wait_for(
                lambda: promql.query(prom.url, 'up{service="chat"}') == 1.0,
                timeout=30,
                what="the first scrape",
            )
            value = promql.query(prom.url, 'demo_latency_seconds{revision="canary"}')
            assert value == 0.25
            assert promql.query(prom.url, 'demo_latency_seconds{revision="nope"}') is None
            assert promql.query(prom.url, "0/0") is None, "NaN is no data"
            with pytest.raises(promql.PrometheusUnavailableError, match="2 series"):
                promql.query(prom.url, "demo_requests_total")
            with pytest.raises(promql.PrometheusUnavailableError, match="bad_data"):
                promql.query(prom.url, "sum(")
            samples = promql.sample_all(
                prom.url, {"p99": 'demo_latency_seconds{revision="canary"}', "x": "absent_x"}
            )
            assert samples == {"p99": 0.25, "x": None}
            url = prom.url
        # Gone: no answer at all, which the canary must treat as "pause", not "no data".
        assert promql.sample_all(url, {"p99": "demo_latency_seconds"}) is None
        with pytest.raises(promql.PrometheusUnavailableError):
            promql.query(url, "up", timeout=2)
    finally:
        server.shutdown()
