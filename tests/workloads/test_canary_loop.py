"""The canary loop against a REAL Prometheus scraping real server processes.

Four model servers (stable; a good canary; a canary whose model is corrupt and answers
500; a canary configured to answer slowly), the real router between them and the
clients, Debian's Prometheus scraping the router and the servers every second, client
load throughout, and the operator's own analysis (gather + plan) deciding. See
canary_stack.py for what is and is not the operator's code path here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modelsmith.api.canary import CanaryStage
from tests.workloads.canary_stack import (
    CANARY,
    SERVICE,
    STABLE,
    Stack,
    breach_to_rollback,
    broken_model,
)
from tests.workloads.serving import ServerProcess, start_server
from tests.workloads.tiny_model import tiny_model

ANALYSIS_S = 2.0
CANARY_SPEC: dict[str, Any] = {
    "steps": [25, 50],
    "interval": "6s",
    "analysisInterval": "2s",
    "failureLimit": 1,
    "inconclusiveLimit": 3,
    "metrics": [
        {"name": "errors", "builtin": "error-rate", "max": 0.05, "onEmpty": "skip"},
        {"name": "p99", "builtin": "latency-p99", "max": 1.0, "onEmpty": "skip"},
    ],
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    model = tiny_model(tmp_path_factory)
    broken = broken_model(model, str(tmp_path_factory.mktemp("broken") / "model"))
    work = tmp_path_factory.mktemp("servers")
    kinds = {
        "stable": (model, {}),
        "good": (model, {}),
        "errors": (broken, {}),
        "slow": (model, {"batching": {"maxWaitMs": 1500, "maxBatchSize": 64}}),
    }
    started = {
        kind: start_server(uri, spec_, workdir=work / kind, name=SERVICE)
        for kind, (uri, spec_) in kinds.items()
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def stack_for(servers: dict[str, ServerProcess], tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(canary: str) -> Stack:
        urls = {STABLE: servers["stable"].url, CANARY: servers[canary].url}
        ports = {STABLE: servers["stable"].port, CANARY: servers[canary].port}
        stacks.append(Stack(CANARY_SPEC, urls, ports, tmp_path))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.close()


def test_a_good_canary_is_promoted_and_no_request_fails(stack_for: Any) -> None:
    stack = stack_for("good")
    stage = stack.rollout.run(timeout=60)
    assert stage == CanaryStage.PROMOTED, stack.rollout.status.canary
    weights = [p.split.weight for _, p in stack.rollout.plans if p.split.canary]
    assert {25, 50} <= set(weights) and max(weights) <= 50
    canary = stack.rollout.status.canary
    assert canary is not None
    checks = {c.name: c for c in canary.checks}
    assert checks["errors"].verdict == "Pass" and checks["errors"].value == 0.0
    assert 'revision="chat-canary"' in checks["errors"].query
    time.sleep(1)
    codes = stack.load.codes
    assert codes[(CANARY, 200)] > 0 and codes[(STABLE, 200)] > 0
    assert all(code == 200 for (_, code) in codes), codes


def test_a_canary_that_errors_is_rolled_back_within_two_analysis_intervals(stack_for: Any) -> None:
    stack = stack_for("errors")
    crossed, rolled = breach_to_rollback(stack, "errors", 0.05, timeout=60)
    assert rolled - crossed <= 2 * ANALYSIS_S + 1.0, (crossed, rolled)
    canary = stack.rollout.status.canary
    assert canary is not None
    rolled_back = next(c for c in stack.rollout.status.conditions if c.type == "RolledBack")
    assert rolled_back.status == "True" and "errors = " in rolled_back.message
    # All traffic back on stable: requests sent after the router read the new table
    # (it polls the file every 0.1 s; requests in flight finish where they started)
    # only reach stable.
    time.sleep(0.5)
    stack.load.codes.clear()
    time.sleep(2)
    assert stack.load.codes and all(rev == STABLE for rev, _ in stack.load.codes), stack.load.codes


def test_a_slow_canary_is_rolled_back_on_p99_latency(stack_for: Any) -> None:
    stack = stack_for("slow")
    crossed, rolled = breach_to_rollback(stack, "p99", 1.0, timeout=60)
    assert rolled - crossed <= 2 * ANALYSIS_S + 1.0, (crossed, rolled)
    rolled_back = next(c for c in stack.rollout.status.conditions if c.type == "RolledBack")
    assert "p99 = " in rolled_back.message


def test_prometheus_going_away_pauses_instead_of_promoting(stack_for: Any) -> None:
    stack = stack_for("good")
    deadline = time.monotonic() + 30
    while stack.rollout.status.canary_weight != 25 and time.monotonic() < deadline:
        stack.rollout.tick()
        time.sleep(0.1)
    assert stack.rollout.status.canary_weight == 25
    stack.prometheus.stop()
    started = datetime.now(UTC)
    while (datetime.now(UTC) - started).total_seconds() < 14:  # > two whole steps
        stack.rollout.tick()
        time.sleep(0.25)
    canary = stack.rollout.status.canary
    assert canary is not None and canary.stage == CanaryStage.PAUSED, canary
    assert stack.rollout.status.canary_weight == 25
    assert canary.history[-1].reason == "MetricsUnavailable"
    assert all(
        p.status.canary and p.status.canary.stage != CanaryStage.PROMOTED
        for _, p in stack.rollout.plans
    )
