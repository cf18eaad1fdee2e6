"""Run an entrypoint while scraping its /metrics and receiving its progress reports,
as Prometheus and the operator's status server would."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port

from .conftest import Run, run_component

LINGER_S = 2.0
"""How long a run keeps its metrics endpoint up at the end, so the last scrape sees
the final counts (MODELSMITH_METRICS_LINGER_S)."""


@dataclass
class Observed:
    """A run, with what its metrics endpoint served and what it reported as progress."""

    run: Run
    scrapes: list[str] = field(default_factory=list)
    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def metrics(self, scrape: int = -1) -> dict[str, float]:
        """One scrape (the last by default), as {name or name{label=value}: value}."""
        assert self.scrapes, f"the metrics endpoint never answered\n{self.run.output[-3000:]}"
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(self.scrapes[scrape]):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values


class StatusEndpoint:
    """The operator's /v1/progress, on loopback: records what it is sent."""

    def __init__(self) -> None:
        received: list[tuple[str, dict[str, Any]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append((self.headers.get("Authorization", ""), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_observed(
    component: str, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
) -> Observed:
    """run_component, scraping /metrics every 0.2 s and receiving progress meanwhile."""
    port = free_port()
    status = StatusEndpoint()
    token = workdir / "token"
    workdir.mkdir(parents=True, exist_ok=True)
    token.write_text(f"{component}-pod-token\n")
    env = {
        **(env or {}),
        "MODELSMITH_METRICS_PORT": str(port),
        "MODELSMITH_METRICS_LINGER_S": str(LINGER_S),
        "MODELSMITH_STATUS_URL": status.url,
        "MODELSMITH_STATUS_TOKEN_FILE": str(token),
    }
    finished: list[Run] = []
    runner = threading.Thread(
        target=lambda: finished.append(run_component(component, config, workdir / "run", env=env))
    )
    runner.start()
    scrapes: list[str] = []
    while runner.is_alive():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                scrapes.append(answer.read().decode())
        except OSError:
            pass
        time.sleep(0.2)
    runner.join()
    status.close()
    return Observed(finished[0], scrapes, status.received)
