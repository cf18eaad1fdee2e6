"""Time from a canary's threshold breach to 100% of traffic on stable.

Real stack (tests/workloads/canary_stack.py): two model servers (stable; a canary whose
model is corrupt and answers 500), the router, Debian's Prometheus scraping every
second, client load, and the operator's analysis (gather + plan). For each run:

- breach: the first moment the canary's error rate, queried from Prometheus the way the
  check does, is above the threshold;
- stable: the first moment after the rollback that the router's clients see only stable
  answers (the router has read the new table), and the moment the rollback was decided.

The baseline is Flagger's documented time to roll back at the same interval:
interval x threshold (Flagger analyses once per interval and rolls back after
`threshold` failed checks; our failureLimit F is Flagger's threshold F + 1).
Goal: ratio <= 0.4.

    .venv/bin/python bench/canary_rollback.py --interval 10s --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.workloads.canary_stack import (  # noqa: E402
    CANARY,
    SERVICE,
    STABLE,
    Stack,
    breach_to_rollback,
    broken_model,
)
from tests.workloads.serving import start_server  # noqa: E402
from tests.workloads.tiny_model import publish_model  # noqa: E402

from modelsmith.api.inference import CanaryStage  # noqa: E402
from modelsmith.canary.decision import parse_duration  # noqa: E402

THRESHOLD = 0.05


def _all_stable_since(stack: Stack, timeout: float = 10) -> float:
    """When clients stop getting canary answers (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.load.codes.clear()
        time.sleep(0.05)
        if stack.load.codes and all(rev == STABLE for rev, _ in stack.load.codes):
            return time.monotonic() - 0.05
    raise RuntimeError("clients still reach the canary")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", default="10s", help="canary.interval (Flagger's interval)")
    parser.add_argument("--failure-limit", type=int, default=1, help="Flagger threshold - 1")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    interval = parse_duration(args.interval).total_seconds()
    flagger = interval * (args.failure_limit + 1)
    canary = {
        "steps": [10, 50],
        "interval": args.interval,
        "failureLimit": args.failure_limit,
        "metrics": [
            {"name": "errors", "builtin": "error-rate", "max": THRESHOLD, "onEmpty": "skip"}
        ],
        "inconclusiveLimit": 100,
    }
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
        work = Path(tmp)
        print("training the tiny model and starting two servers…", flush=True)
        model = publish_model(str(work / "model"))
        broken = broken_model(model, str(work / "broken"))
        servers = {
            STABLE: start_server(model, {}, workdir=work / "stable", name=SERVICE),
            CANARY: start_server(broken, {}, workdir=work / "canary", name=SERVICE),
        }
        try:
            for server in servers.values():
                server.wait_ready()
            urls = {rev: s.url for rev, s in servers.items()}
            ports = {rev: s.port for rev, s in servers.items()}
            decided, seen = [], []
            for run in range(args.runs):
                stack = Stack(canary, urls, ports, work / f"run-{run}")
                try:
                    crossed, rolled = breach_to_rollback(stack, "errors", THRESHOLD, 4 * flagger)
                    if stack.rollout.stage != CanaryStage.ROLLED_BACK:
                        raise RuntimeError(f"not rolled back: {stack.rollout.status.canary}")
                    clean = _all_stable_since(stack)
                finally:
                    stack.close()
                decided.append(rolled - crossed)
                seen.append(clean - crossed)
                print(
                    f"run {run}: breach -> rollback decided {decided[-1]:.2f} s, "
                    f"-> clients see only stable {seen[-1]:.2f} s",
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
    med = statistics.median(seen)
    print(
        f"\ninterval {args.interval}, failureLimit {args.failure_limit} "
        f"(Flagger threshold {args.failure_limit + 1}), analysis every "
        f"{interval / 5:g} s (default interval/5)"
    )
    print(f"breach -> rollback decided: median {statistics.median(decided):.2f} s")
    print(f"breach -> 100% stable (clients): median {med:.2f} s, max {max(seen):.2f} s")
    print(f"Flagger interval x threshold: {flagger:.1f} s")
    print(f"ratio (ours / Flagger): {med / flagger:.3f}  (goal <= 0.4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
