"""A canary rollout with everything real but Kubernetes: model servers, the router,
Prometheus scraping them, client load, and the operator's own analysis step.

The operator's reconcile is gather (PromQL for this revision, sent to Prometheus) then
plan (the pure rollout bookkeeping, which calls the decision) then apply the split. The
cluster half (Deployments, ConfigMaps) is tested on the dev cluster; here the split goes
into the router's routes file, which is what the ConfigMap becomes for the router. So a
test sees a bad model version's errors go through the router's metrics and Prometheus
into a rollback, and the router's traffic follow, with the code that runs in the operator.
Used by tests/workloads/test_canary_loop.py and bench/canary_rollback.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelsmith.api.canary import CanaryStage, Decision
from modelsmith.api.inference import InferenceServiceSpec, InferenceServiceStatus, ServingPhase
from modelsmith.canary.analysis import Target, gather
from modelsmith.canary.decision import TERMINAL, Policy, resolve_query
from modelsmith.canary.rollout import Inputs, Plan, plan
from modelsmith.devcluster import prometheus
from modelsmith.routes import Mirror, RevisionRoute, RouteTable
from tests.helpers import free_port

NAMESPACE, SERVICE = "ml", "chat"
STABLE, CANARY = "chat-stable", "chat-canary"
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def router(routes: Path) -> Iterator[tuple[str, str]]:
    """The real router process reading ``routes``; yields (url, metrics address)."""
    port, metrics = free_port(), free_port()
    exe = Path(sys.executable).with_name("modelsmith")
    proc = subprocess.Popen(
        [
            str(exe),
            "router",
            f"--routes-file={routes}",
            f"--port={port}",
            f"--metrics-port={metrics}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1):  # noqa: S310
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    raise RuntimeError("router exited at start-up") from None
                time.sleep(0.1)
        else:
            raise RuntimeError("router not ready in 30 s")
        yield url, f"127.0.0.1:{metrics}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class Load:
    """Steady client traffic through the router: a few threads, small completions."""

    url: str
    model: str = SERVICE
    threads: int = 4
    pause: float = 0.02
    codes: Counter[tuple[str, int]] = field(default_factory=Counter)
    """(revision that answered, status code) -> count."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _one(self) -> None:
        body = json.dumps({"model": self.model, "prompt": "the cat", "max_tokens": 4}).encode()
        request = urllib.request.Request(  # noqa: S310 (loopback http)
            f"{self.url}/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (loopback)
                resp.read()
                self.codes[(resp.headers.get("x-modelsmith-revision", "?"), resp.status)] += 1
        except urllib.error.HTTPError as exc:
            self.codes[(exc.headers.get("x-modelsmith-revision", "?"), exc.code)] += 1
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            self.codes[("?", 0)] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            time.sleep(self.pause)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)


@dataclass
class Rollout:
    """The operator's analysis loop for one canary, writing the router's routes file."""

    spec: InferenceServiceSpec
    urls: dict[str, str]
    """Revision -> base URL of its server."""
    routes: Path
    prometheus_url: str | None
    status: InferenceServiceStatus = field(
        default_factory=lambda: InferenceServiceStatus(
            stable_revision=STABLE, model_uri="stable", phase=ServingPhase.READY
        )
    )
    decision: Decision = Decision.AUTO
    plans: list[tuple[datetime, Plan]] = field(default_factory=list)

    def write_routes(self, weights: dict[str, int], mirror: Mirror | None = None) -> None:
        table = RouteTable(
            namespace=NAMESPACE,
            service=SERVICE,
            revisions=[
                RevisionRoute(name=n, url=self.urls[n], weight=w) for n, w in weights.items()
            ],
            mirror=mirror,
        )
        tmp = self.routes.with_suffix(".tmp")
        tmp.write_text(table.render())
        tmp.replace(self.routes)

    def tick(self, now: datetime | None = None) -> Plan:
        now = now or datetime.now(UTC)
        ready = {STABLE: True, CANARY: True}
        policy = Policy.of(self.spec)
        samples, queries = gather(
            self.prometheus_url,
            Target(NAMESPACE, SERVICE),
            self.spec,
            self.status,
            CANARY,
            ready=True,
            now=now,
            policy=policy,
        )
        inputs = Inputs(
            self.spec,
            CANARY,
            "canary",
            ready,
            samples,
            queries,
            self.decision,
            now,
            1,
            policy=policy,
        )
        result = plan(inputs, self.status)
        self.status = result.status
        self.plans.append((now, result))
        split = result.split
        weights = {split.stable: 100 - split.weight if split.canary else 100}
        if split.canary:
            weights[split.canary] = split.weight
        mirror = (
            Mirror(revision=CANARY, percent=split.mirror_percent) if split.mirror_percent else None
        )
        self.write_routes(weights, mirror)
        return result

    @property
    def stage(self) -> CanaryStage | None:
        return self.status.canary.stage if self.status.canary else None

    def run(self, timeout: float, every: float = 0.25) -> CanaryStage | None:
        """Tick until the rollout ends (or ``timeout``); the stage it ended in."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tick()
            if self.stage in TERMINAL:
                return self.stage
            time.sleep(every)
        return self.stage


class Stack:
    """One rollout's router, Prometheus and load, around the module's servers."""

    def __init__(
        self, canary: dict[str, Any], urls: dict[str, str], ports: dict[str, int], workdir: Path
    ) -> None:
        """``urls`` and ``ports``: the stable and canary servers, by revision."""
        self.exit = ExitStack()
        workdir.mkdir(parents=True, exist_ok=True)
        routes = workdir / "routes.json"
        self.rollout = Rollout(spec(canary), urls, routes, prometheus_url=None)
        self.rollout.write_routes({STABLE: 100})
        self.url, metrics = self.exit.enter_context(router(routes))
        targets = [(metrics, {})] + [
            (f"127.0.0.1:{port}", {"revision": rev}) for rev, port in ports.items()
        ]
        self.prometheus = self.exit.enter_context(prometheus.serve(targets, interval="1s"))
        self.rollout.prometheus_url = self.prometheus.url
        self.load = self.exit.enter_context(Load(self.url))

    def close(self) -> None:
        self.exit.close()

    def query(self, check: str) -> float | None:
        policy = Policy.from_spec(self.rollout.spec.canary)  # type: ignore[arg-type]
        found = next(c for c in policy.checks if c.name == check)
        variables = {"namespace": NAMESPACE, "service": SERVICE, "revision": CANARY}
        interval = self.rollout.spec.canary.interval  # type: ignore[union-attr]
        text = resolve_query(found, variables | {"interval": interval})
        return query_value(self.prometheus.url, text)


def breach_to_rollback(
    stack: Stack, check: str, bound: float, timeout: float
) -> tuple[float, float]:
    """Tick the rollout; return (when the check first crossed its bound, when rolled back)."""
    crossed: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.rollout.tick()
        value = stack.query(check)
        if crossed is None and value is not None and value > bound:
            crossed = time.monotonic()
        if stack.rollout.stage == CanaryStage.ROLLED_BACK:
            if crossed is None:
                raise AssertionError("rolled back before the threshold was crossed")
            return crossed, time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"not rolled back in {timeout}s: {stack.rollout.status.canary}")


def spec(canary: dict[str, Any]) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {"model": {"uri": "/models/canary"}, "canary": canary}
    )


def broken_model(source: str, uri: str) -> str:
    """A copy of ``source`` whose output layer is NaN: it loads and reports ready, then
    every generation fails, which is what a corrupt new model version looks like."""
    import shutil

    from safetensors.torch import load_file, save_file

    from modelsmith_runtime import storage

    with storage.publish(uri, {"kind": "PretrainJob"}) as (staging, _digest):
        for item in Path(source).iterdir():
            if item.is_file() and not item.name.startswith("_MODELSMITH"):
                shutil.copy(item, staging / item.name)
        weights = load_file(str(staging / "model.safetensors"))
        weights["lm_head.weight"].fill_(float("nan"))
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
    return uri


def query_value(prometheus_url: str, promql_text: str) -> float | None:
    from modelsmith.canary import promql

    try:
        return promql.query(prometheus_url, promql_text)
    except promql.PrometheusUnavailableError:
        return None
