"""Prometheus metrics a workload serves while it runs, on MODELSMITH_METRICS_PORT.

`start_server`/`stop_server` are the one lifecycle every workload's endpoint uses (the
data pipeline's ledger collector too); `Gauges` is the simple case of named gauges.
MODELSMITH_METRICS_LINGER_S keeps the endpoint up that long after the run, so a scrape
interval longer than a short run still sees its final values.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

PORT_ENV = "MODELSMITH_METRICS_PORT"
LINGER_ENV = "MODELSMITH_METRICS_LINGER_S"


def _env_number(name: str) -> float:
    try:
        return float(os.environ.get(name, "") or 0)
    except ValueError:
        return 0.0


def start_server(populate: Callable[[Any], None]) -> Any:
    """Serve a registry of our own (only the workload's metrics, no clash with another
    user in the process), filled by ``populate``, when MODELSMITH_METRICS_PORT names a
    port; the server, or None when no port is named or it is taken."""
    port = int(_env_number(PORT_ENV))
    if not port:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    populate(registry)
    try:
        server, _thread = start_http_server(port, registry=registry)
    except OSError as exc:
        log.warning("metrics port %d unavailable: %s", port, exc)
        return None
    return server


def stop_server(server: Any) -> None:
    """After MODELSMITH_METRICS_LINGER_S, so a last scrape sees the final values."""
    if server is None:
        return
    linger = _env_number(LINGER_ENV)
    if linger > 0:
        time.sleep(linger)
    server.shutdown()
    server.server_close()


class Gauges:
    """`<prefix><name>` gauges, one per entry of ``helps``; unknown names are ignored.
    ``labelled`` gauges (name -> (label, help)) carry one label: a series per value."""

    def __init__(
        self,
        prefix: str,
        helps: Mapping[str, str],
        labelled: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self._gauges: dict[str, Any] = {}
        self._labelled: dict[str, Any] = {}

        def populate(registry: Any) -> None:
            from prometheus_client import Gauge

            self._gauges = {
                name: Gauge(f"{prefix}{name}", text, registry=registry)
                for name, text in helps.items()
            }
            self._labelled = {
                name: Gauge(f"{prefix}{name}", text, [label], registry=registry)
                for name, (label, text) in (labelled or {}).items()
            }

        self._server = start_server(populate)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def set(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            gauge = self._gauges.get(name)
            if gauge is not None:
                gauge.set(value)

    def set_labelled(self, name: str, values: Mapping[str, float]) -> None:
        """Gauge ``name``'s series, one per label value."""
        gauge = self._labelled.get(name)
        if gauge is not None:
            for label, value in values.items():
                gauge.labels(label).set(value)

    def close(self) -> None:
        stop_server(self._server)
        self._server = None
