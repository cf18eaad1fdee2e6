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

import pytest

CLUSTER_TIERS = ("integration", "e2e")
HERE = Path(__file__).parent


def xdist_group(path: Path) -> str:
    tier = path.relative_to(HERE).parts[0]
    return "cluster" if tier in CLUSTER_TIERS else path.relative_to(HERE).as_posix()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item.path)))
