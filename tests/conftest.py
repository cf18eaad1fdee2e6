"""How the suite splits across pytest-xdist's workers (hack/test.sh runs two).

The cluster tiers (integration, e2e) share one dev cluster and its real node, bring it
up once per session and kill its components on purpose, so they run in order on one
worker. Everything else keeps its module together, because the workload tests start
their expensive runs (Ray, torchrun, DeepSpeed) once per module. The cluster tier
mostly waits on the API server and on pods, so the other worker's CPU-bound modules
fill the time it spends waiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CLUSTER_TIERS = ("integration", "e2e")
HERE = Path(__file__).parent


def xdist_group(path: Path) -> str:
    tier = path.relative_to(HERE).parts[0]
    return "cluster" if tier in CLUSTER_TIERS else path.relative_to(HERE).as_posix()


# tryfirst: xdist's worker turns the marker into the group it schedules by in its own
# pytest_collection_modifyitems, registered after this conftest and so called before it;
# a marker added later is never seen.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item.path)))


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Refuse to run ungrouped. xdist groups by appending ``@group`` to each node id; with
    pytest 9.2 that write is lost (pytest-xdist#1386) and nothing fails: the cluster
    modules were spread over both workers, two chains and two chart installs raced on
    one dev cluster, and every failure looked like a flake."""
    if node.config.getoption("dist") != "loadgroup":
        return
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid]
    if ungrouped:
        pytest.exit(
            f"pytest-xdist did not group {len(ungrouped)} tests (e.g. {ungrouped[0]}): its "
            "loadgroup does not work with this pytest (pytest-xdist#1386). Install the "
            "pytest that pyproject.toml pins, or run with MODELSMITH_TEST_WORKERS=0.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
