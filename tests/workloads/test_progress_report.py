"""A training run reports progress to the operator's endpoint, with its pod's token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workloads.conftest import run_component
from tests.workloads.observe import StatusEndpoint
from tests.workloads.tiny_dataset import pretrain_config, publish_dataset


@pytest.fixture
def status_endpoint() -> Iterator[StatusEndpoint]:
    endpoint = StatusEndpoint()
    yield endpoint
    endpoint.close()


def test_training_reports_steps_to_the_status_endpoint(
    tmp_path: Path, status_endpoint: StatusEndpoint
) -> None:
    url, received = status_endpoint.url, status_endpoint.received
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
