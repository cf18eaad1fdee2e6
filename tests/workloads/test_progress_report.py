"""A training run reports progress to the operator's endpoint, with its pod's token."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.workloads.conftest import run_component
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset


@pytest.fixture
def status_endpoint() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.headers.get("Authorization", ""), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_training_reports_steps_to_the_status_endpoint(
    tmp_path: Path, status_endpoint: tuple[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    url, received = status_endpoint
    dataset = tmp_path / "data"
    publish_dataset(str(dataset))
    token = tmp_path / "token"
    token.write_text("projected-token\n")
    config = pretrain_config(str(dataset), str(tmp_path / "model"))
    env = {"MODELSMITH_STATUS_URL": url, "MODELSMITH_STATUS_TOKEN_FILE": str(token)}
    run = run_component("pretrain", config, tmp_path / "run", env=env)
    assert run.returncode == 0, run.output
    assert received, "no progress report arrived"
    assert {auth for auth, _ in received} == {"Bearer projected-token"}
    total = config["spec"]["training"]["steps"]
    assert received[0][1]["total"] == total
    assert received[-1][1] == {"step": total, "total": total}, "the last step is always sent"
