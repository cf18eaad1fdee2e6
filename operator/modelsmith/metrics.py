"""The operator's own Prometheus metrics: how much it asks of the API server, and why.

API requests per reconcile is the number that decides whether the operator scales to
thousands of resources; it is exported rather than logged so a benchmark, a dashboard
and an alert read the same figure.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

API_REQUESTS = Counter(
    "modelsmith_api_requests_total", "Kubernetes API requests the operator made.", ["method"]
)
RECONCILES = Counter(
    "modelsmith_reconciles_total", "Reconciles run, by kind and outcome.", ["kind", "outcome"]
)
RECONCILE_SECONDS = Histogram(
    "modelsmith_reconcile_seconds", "Time spent in one reconcile.", ["kind"]
)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: do not serve)."""
    if port:
        start_http_server(port)
