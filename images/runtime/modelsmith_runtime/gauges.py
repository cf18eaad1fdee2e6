"""Prometheus gauges a workload serves while it runs, on MODELSMITH_METRICS_PORT.

A registry of its own per process (only the workload's metrics, no clash with a second
user in the same process), served over HTTP only when the operator named a port.
MODELSMITH_METRICS_LINGER_S keeps the endpoint up that long after the run, so a scrape
interval longer than a short run still sees its final values.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

PORT_ENV = "MODELSMITH_METRICS_PORT"
LINGER_ENV = "MODELSMITH_METRICS_LINGER_S"


def _env_number(name: str) -> float:
    try:
        return float(os.environ.get(name, "") or 0)
    except ValueError:
        return 0.0


class Gauges:
    """`<prefix><name>` gauges, one per entry of ``helps``; unknown names are ignored."""

    def __init__(self, prefix: str, helps: Mapping[str, str]) -> None:
        self._gauges: dict[str, Any] = {}
        self._server: Any = None
        port = int(_env_number(PORT_ENV))
        if not port:
            return
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        registry = CollectorRegistry()
        try:
            self._server, _thread = start_http_server(port, registry=registry)
        except OSError as exc:
            log.warning("metrics port %d unavailable: %s", port, exc)
            return
        self._gauges = {
            name: Gauge(f"{prefix}{name}", text, registry=registry) for name, text in helps.items()
        }

    @property
    def serving(self) -> bool:
        return self._server is not None

    def set(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            gauge = self._gauges.get(name)
            if gauge is not None:
                gauge.set(value)

    def close(self) -> None:
        if self._server is None:
            return
        linger = _env_number(LINGER_ENV)
        if linger > 0:
            time.sleep(linger)
        self._server.shutdown()
        self._server = None
