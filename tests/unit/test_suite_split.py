"""The suite's split across xdist workers holds (tests/conftest.py): when it did not,
nothing failed, and two workers raced on one dev cluster (pytest-xdist#1386)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[2]
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
MODULES = ["tests/unit/test_jobstatus.py", "tests/unit/test_nodestorage.py"]


def test_each_module_runs_whole_on_one_worker() -> None:
    done = subprocess.run(
        [*PYTEST, "-n", "2", "--dist", "loadgroup", "-v", *MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, module in re.findall(r"\[(gw\d+)\] \[ *\d+%\] PASSED (\S+?\.py)::", done.stdout):
        workers[module].add(worker)
    assert set(workers) == set(MODULES), done.stdout[-3000:]
    assert all(len(w) == 1 for w in workers.values()), dict(workers)
