"""The built-in router as it runs in a pod: a real `modelsmith router` process, real
upstream servers and real HTTP on loopback; the ConfigMap source against the real
API server, and the canary's built-in PromQL against a real Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from modelsmith.api.canary import BuiltinCheck, MetricCheck
from modelsmith.canary import promql
from modelsmith.canary.decision import resolve_query
from modelsmith.devcluster import prometheus
from modelsmith.routes import REVISION_HEADER, ROUTES_KEY, RouteTable
from tests.helpers import free_port
from tests.integration.upstreams import sse_chunks

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
MODELSMITH = Path(sys.executable).parent / "modelsmith"
SIGMAS = 5.0
READ_TIMEOUT = 2.0
"""The test router's --read-timeout: long enough for any answer here but /slow?delay=3."""


def within(count: int, total: int, percent: float) -> bool:
    """Binomial count within SIGMAS standard deviations of its expectation."""
    p = percent / 100
    return abs(count - total * p) <= SIGMAS * math.sqrt(total * p * (1 - p)) + 1e-9


# --------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    """Two model servers, `stable` and `canary`, in a process of their own."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "upstreams.py"), "stable", "canary"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    proc.terminate()
    proc.wait(timeout=10)


@dataclass
class Router:
    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    log: Path
    routes_file: Path | None

    def write(self, table: dict[str, Any] | str) -> None:
        """Replace the routes file atomically, as a ConfigMap volume update would."""
        assert self.routes_file is not None
        text = table if isinstance(table, str) else json.dumps(table)
        scratch = self.routes_file.with_suffix(".tmp")
        scratch.write_text(text)
        scratch.replace(self.routes_file)

    async def routes(self, session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.get(f"{self.url}/-/routes") as answer:
            return answer.status, await answer.text()

    async def wait_routes(
        self, session: aiohttp.ClientSession, table: dict[str, Any], timeout: float = 5.0
    ) -> float:
        """Until /-/routes shows ``table``; the monotonic time it was first seen."""
        rendered = RouteTable.model_validate(table).render()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, text = await self.routes(session)
            if status == 200 and text == rendered:
                return time.monotonic()
            await asyncio.sleep(0.02)
        raise AssertionError(f"router did not take {rendered} in {timeout}s:\n{self.tail()}")

    async def use(self, session: aiohttp.ClientSession, table: dict[str, Any]) -> float:
        self.write(table)
        return await self.wait_routes(session, table)

    async def metrics(
        self, session: aiohttp.ClientSession
    ) -> dict[tuple[str, frozenset[Any]], float]:
        async with session.get(f"{self.metrics_url}/metrics") as answer:
            text = await answer.text()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@contextlib.contextmanager
def start_router(
    tmp: Path, *extra: str, routes_file: bool = True, env: dict[str, str] | None = None
) -> Iterator[Router]:
    port, metrics_port = free_port(), free_port()
    routes = tmp / "routes.json" if routes_file else None
    log = tmp / f"router-{port}.log"
    source = ["--routes-file", str(routes)] if routes else []
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                str(MODELSMITH),
                "router",
                *source,
                *extra,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--metrics-port",
                str(metrics_port),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    router = Router(
        proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", log, routes
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"router exited {proc.returncode}:\n{router.tail()}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):  # bound last
                    break
            except OSError:
                assert time.monotonic() < deadline, f"router not listening:\n{router.tail()}"
                time.sleep(0.05)
        yield router
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, str]) -> Iterator[Router]:
    """The router most tests share; each test sets the table it needs first."""
    tmp = tmp_path_factory.mktemp("router")
    (tmp / "routes.json").write_text(json.dumps(table(upstreams, canary=0)))
    with start_router(tmp, "--read-timeout", str(READ_TIMEOUT)) as running:
        yield running


def table(
    upstreams: dict[str, str],
    *,
    canary: int,
    mirror: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "namespace": "team-a",
        "service": "chat",
        "revisions": [
            {"name": "stable", "url": upstreams["stable"], "weight": 100 - canary},
            {"name": "canary", "url": upstreams["canary"], "weight": canary},
        ],
    }
    if mirror:
        doc["mirror"] = {"revision": "canary", "percent": mirror}
    return {**doc, **extra}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


# --------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Answer:
    status: int
    header: str | None
    body: str | None
    sent: float
    elapsed: float


async def call(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Answer:
    sent = time.monotonic()
    async with session.get(url, headers=headers) as answer:
        raw = await answer.read()
    body: str | None = None
    if answer.content_type == "application/json":
        body = json.loads(raw).get("revision")
    return Answer(
        answer.status, answer.headers.get(REVISION_HEADER), body, sent, time.monotonic() - sent
    )


async def fire(
    session: aiohttp.ClientSession,
    url: str,
    count: int,
    concurrency: int = 32,
    headers: dict[str, str] | None = None,
) -> list[Answer]:
    """``count`` requests, ``concurrency`` at a time (closed loop)."""
    answers: list[Answer] = []
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            answers.append(await call(session, url, headers))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def share(answers: list[Answer], revision: str) -> int:
    return sum(1 for a in answers if a.header == revision)


async def upstream_count(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/_stats") as answer:
        count: int = (await answer.json())["requests"]
        return count


def sample(metrics: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    want = {"namespace": "team-a", "service": "chat", **labels}
    return sum(
        value
        for (sample_name, sample_labels), value in metrics.items()
        if sample_name == name and want.items() <= dict(sample_labels).items()
    )


# --------------------------------------------------------------------------- tests


async def test_no_table_is_503_an_invalid_one_changes_nothing_then_one_serves(
    tmp_path: Path, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    with start_router(tmp_path) as router:
        async with session.get(f"{router.url}/v1/models") as answer:
            assert answer.status == 503
            assert "no route table yet" in (await answer.json())["error"]["message"]
        async with session.get(f"{router.url}/-/ready") as answer:
            assert answer.status == 503
        async with session.get(f"{router.url}/-/healthy") as answer:
            assert answer.status == 200
        router.write('{"namespace": "team-a"')  # half a table
        await asyncio.sleep(0.5)
        assert (await call(session, f"{router.url}/v1/models")).status == 503
        await router.use(session, table(upstreams, canary=0))
        async with session.get(f"{router.metrics_url}/-/ready") as answer:
            assert answer.status == 200
        answer = await call(session, f"{router.url}/v1/models")
        assert (answer.status, answer.header, answer.body) == (200, "stable", "stable")
    assert "invalid route table" in router.tail()


async def test_invalid_table_keeps_the_last_good_one(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    good = table(upstreams, canary=100)
    await router.use(session, good)
    before = await router.metrics(session)
    bad_weights = table(upstreams, canary=30)
    bad_weights["revisions"][0]["weight"] = 50  # 50 + 30
    for bad in (json.dumps(bad_weights), "not json", json.dumps({**good, "mirror": {}})):
        router.write(bad)
        await asyncio.sleep(0.4)
        status, text = await router.routes(session)
        assert (status, text) == (200, RouteTable.model_validate(good).render())
        answers = await fire(session, f"{router.url}/v1/models", 20, concurrency=4)
        assert {(a.status, a.header) for a in answers} == {(200, "canary")}
    after = await router.metrics(session)
    invalid = ("modelsmith_router_table_updates_total", frozenset({("outcome", "invalid")}))
    assert after[invalid] - before.get(invalid, 0.0) == 3


async def test_weights_hold_over_thousands_of_requests(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    await router.use(session, table(upstreams, canary=20))
    answers = await fire(session, f"{router.url}/v1/completions?n=1", 2000)
    assert {a.status for a in answers} == {200}
    assert all(a.header == a.body for a in answers), "header names the revision that answered"
    canary = share(answers, "canary")
    assert within(canary, 2000, 20), f"{canary}/2000 to canary at weight 20"

    await router.use(session, table(upstreams, canary=0))
    canary_before = await upstream_count(session, upstreams["canary"])
    answers = await fire(session, f"{router.url}/v1/completions", 500)
    assert {(a.status, a.header) for a in answers} == {(200, "stable")}
    assert await upstream_count(session, upstreams["canary"]) == canary_before


async def test_shadow_copies_reach_the_canary_and_never_the_client(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    await router.use(session, table(upstreams, canary=0, mirror=30))
    before = await router.metrics(session)
    canary_before = await upstream_count(session, upstreams["canary"])
    answers = await fire(session, f"{router.url}/v1/chat/completions", 1000)
    assert {(a.status, a.header, a.body) for a in answers} == {(200, "stable", "stable")}

    async def settled() -> dict[tuple[str, frozenset[Any]], float]:
        while True:
            now = await router.metrics(session)
            in_flight = sample(now, "modelsmith_router_in_flight_requests", shadow="true")
            if in_flight == 0:
                return now
            await asyncio.sleep(0.05)

    after = await asyncio.wait_for(settled(), timeout=10)
    mirrored = await upstream_count(session, upstreams["canary"]) - canary_before
    dropped = sample(after, "modelsmith_router_mirror_dropped_total") - sample(
        before, "modelsmith_router_mirror_dropped_total"
    )
    assert within(mirrored + int(dropped), 1000, 30), (mirrored, dropped)
    shadow_ok = {"revision": "canary", "code": "200", "shadow": "true"}
    counted = sample(after, "modelsmith_router_requests_total", **shadow_ok) - sample(
        before, "modelsmith_router_requests_total", **shadow_ok
    )
    assert counted == mirrored
    user_canary = {"revision": "canary", "shadow": "false"}
    assert sample(after, "modelsmith_router_requests_total", **user_canary) == sample(
        before, "modelsmith_router_requests_total", **user_canary
    )


async def test_mirrors_are_bounded_and_never_slow_the_client(
    tmp_path: Path, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    (tmp_path / "routes.json").write_text(json.dumps(table(upstreams, canary=0, mirror=100)))
    async with session.post(f"{upstreams['canary']}/_config", json={"delay": 2.0}):
        pass
    try:
        with start_router(tmp_path, "--max-mirrors", "4") as router:
            await router.wait_routes(session, table(upstreams, canary=0, mirror=100))
            canary_before = await upstream_count(session, upstreams["canary"])
            answers = await fire(session, f"{router.url}/v1/models", 40, concurrency=40)
            assert {(a.status, a.header) for a in answers} == {(200, "stable")}
            slowest = max(a.elapsed for a in answers)
            assert slowest < 1.5, f"a client waited {slowest:.2f}s: mirrors must not block"
            await asyncio.sleep(2.5)  # the four copies finish
            metrics = await router.metrics(session)
            dropped = sample(metrics, "modelsmith_router_mirror_dropped_total", revision="canary")
            assert dropped >= 30
            mirrored = await upstream_count(session, upstreams["canary"]) - canary_before
            assert mirrored + dropped == 40
    finally:
        async with session.post(f"{upstreams['canary']}/_config", json={"delay": 0}):
            pass


async def test_no_request_fails_while_weights_change(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    await router.use(session, table(upstreams, canary=0))
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def load(path: str) -> None:
        while not stop.is_set():
            answers.append(await call(session, f"{router.url}{path}"))

    workers = [asyncio.create_task(load("/v1/models")) for _ in range(16)]
    workers += [asyncio.create_task(load("/slow?delay=0.3")) for _ in range(4)]
    phases: list[tuple[int, float, float]] = []  # weight, applied, next write
    try:
        for weight in (0, 10, 50, 100, 50, 10, 0):
            applied = await router.use(session, table(upstreams, canary=weight))
            await asyncio.sleep(0.7)
            phases.append((weight, applied, time.monotonic()))
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert len(answers) > 1000
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed: {failed[:3]}"
    assert all(a.header == a.body for a in answers), "each request stayed on its revision"
    for weight, applied, ended in phases:
        # Sent after the table was seen in effect, and before the next one was written.
        phase = [a for a in answers if applied <= a.sent < ended - 0.05]
        canary = share(phase, "canary")
        assert len(phase) > 50
        if weight in (0, 100):
            assert canary == len(phase) * weight // 100, (weight, canary, len(phase))
        else:
            assert within(canary, len(phase), weight), (weight, canary, len(phase))


async def test_a_header_pins_a_revision_and_an_unknown_one_is_refused(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    await router.use(session, table(upstreams, canary=0))
    url = f"{router.url}/v1/models"
    pinned = await fire(session, url, 20, concurrency=4, headers={REVISION_HEADER: "canary"})
    assert {(a.status, a.header, a.body) for a in pinned} == {(200, "canary", "canary")}
    async with session.get(url, headers={REVISION_HEADER: "v9"}) as answer:
        assert answer.status == 400
        message = (await answer.json())["error"]["message"]
    assert "'v9' is not a revision" in message
    assert "stable, canary" in message

    await router.use(session, table(upstreams, canary=100, pinHeader="x-ab-arm"))
    answer = await call(session, url, {"x-ab-arm": "stable"})
    assert (answer.status, answer.header, answer.body) == (200, "stable", "stable")


async def test_the_request_goes_through_whole_and_the_answer_comes_back_whole(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    await router.use(session, table(upstreams, canary=0))
    headers = {"X-Request-Id": "r-1", "Connection": "keep-alive, X-Hop", "X-Hop": "drop me"}
    url = f"{router.url}/v1/a%2Fb/embeddings?model=m&x=1&x=2&q=%20sp"
    async with session.put(url, data=b'{"input": "hi"}', headers=headers) as answer:
        assert answer.status == 200
        echoed = await answer.json()
        assert answer.headers[REVISION_HEADER] == "stable"
        assert answer.headers["X-Upstream"] == "stable"
        assert answer.headers["Set-Cookie"].startswith("upstream=stable")
    assert echoed["method"] == "PUT"
    assert echoed["raw_path"] == "/v1/a%2Fb/embeddings?model=m&x=1&x=2&q=%20sp"
    assert echoed["body"] == '{"input": "hi"}'
    assert echoed["headers"]["x-request-id"] == "r-1"
    assert "x-hop" not in echoed["headers"]
    assert echoed["headers"]["host"] == upstreams["stable"].removeprefix("http://")

    big = b"x" * 300_000  # a long prompt; the client first asks whether it may send it
    async with session.post(f"{router.url}/v1/completions", data=big, expect100=True) as answer:
        assert answer.status == 200
        assert (await answer.json())["body"] == big.decode()

    async with session.head(f"{router.url}/v1/models") as answer:
        assert answer.status == 200
        assert int(answer.headers["Content-Length"]) > 0
    async with session.get(f"{router.url}/-/nope") as answer:
        assert answer.status == 404  # /-/ is the router's own, never proxied


async def test_streaming_passes_through_chunk_by_chunk(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    await router.use(session, table(upstreams, canary=100))
    url = f"{router.url}/v1/chat/completions?chunks=5&gap=0.3"
    expected = sse_chunks("canary", 5)
    received, stamps = b"", []
    sent = time.monotonic()
    async with session.post(url, json={"stream": True, "messages": []}) as answer:
        assert answer.status == 200
        assert answer.headers[REVISION_HEADER] == "canary"
        assert answer.content_type == "text/event-stream"
        async for chunk in answer.content.iter_any():
            received += chunk
            stamps.append((time.monotonic() - sent, len(received)))
    assert received == b"".join(expected)
    first = next(t for t, size in stamps if size >= len(expected[0]))
    last = stamps[-1][0]
    assert first < 0.5, f"first event after {first:.2f}s: buffered?"
    assert last - first > 1.0, f"events spread over {last - first:.2f}s only"

    # An upstream that dies mid-stream must not look like a stream that ended.
    broken = {"revision": "canary", "code": "502", "shadow": "false"}
    before = sample(await router.metrics(session), "modelsmith_router_requests_total", **broken)
    async with session.get(f"{router.url}/break") as answer:
        assert answer.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()
    after = sample(await router.metrics(session), "modelsmith_router_requests_total", **broken)
    assert after - before == 1

    # A client that leaves mid-stream is told apart from an upstream failure (499).
    gone = {"revision": "canary", "code": "499", "shadow": "false"}
    async with aiohttp.ClientSession() as own:
        answer = await own.get(f"{router.url}/stream?chunks=10&gap=0.2")
        await answer.content.readany()
        answer.close()
    deadline = time.monotonic() + 5
    while sample(await router.metrics(session), "modelsmith_router_requests_total", **gone) < 1:
        assert time.monotonic() < deadline, "the client's leaving was never counted"
        await asyncio.sleep(0.1)


async def test_metrics_count_each_revision_and_upstream_failures(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    broken = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    doc = table(upstreams, canary=30)
    doc["revisions"].append({"name": "broken", "url": broken, "weight": 0})
    await router.use(session, doc)
    before = await router.metrics(session)
    answers = await fire(session, f"{router.url}/v1/models", 200, concurrency=8)
    seen = {rev: share(answers, rev) for rev in ("stable", "canary")}
    refused = await call(session, f"{router.url}/v1/models", {REVISION_HEADER: "broken"})
    dropped = await call(session, f"{router.url}/fail", {REVISION_HEADER: "stable"})
    slow = await call(session, f"{router.url}/slow?delay=3", {REVISION_HEADER: "canary"})
    assert (refused.status, refused.header) == (502, "broken")
    assert (dropped.status, dropped.header) == (502, "stable")
    assert (slow.status, slow.header) == (504, "canary")
    assert READ_TIMEOUT - 0.1 < slow.elapsed < READ_TIMEOUT + 1.0
    after = await router.metrics(session)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    requests = "modelsmith_router_requests_total"
    for rev, count in seen.items():
        assert delta(requests, revision=rev, code="200", shadow="false") == count
    assert delta(requests, revision="broken", code="502", shadow="false") == 1
    assert delta(requests, revision="stable", code="502", shadow="false") == 1
    assert delta(requests, revision="canary", code="504", shadow="false") == 1
    duration = "modelsmith_router_request_duration_seconds_count"
    assert delta(duration, revision="stable", shadow="false") == seen["stable"] + 1
    assert delta(duration, revision="canary", shadow="false") == seen["canary"] + 1
    ttft = "modelsmith_router_time_to_first_token_seconds_count"
    assert delta(ttft, revision="stable", shadow="false") == seen["stable"]  # no body, no TTFT
    label_sets = {
        (name, frozenset(dict(labels).keys() - {"le"}))
        for name, labels in after
        if name.startswith("modelsmith_router_") and "revision" in dict(labels)
    }
    per_revision = frozenset({"namespace", "service", "revision", "shadow"})
    assert label_sets >= {
        (requests, per_revision | {"code"}),
        ("modelsmith_router_request_duration_seconds_bucket", per_revision),
        ("modelsmith_router_time_to_first_token_seconds_bucket", per_revision),
        ("modelsmith_router_in_flight_requests", per_revision),
    }
    gauge = sample(after, "modelsmith_router_in_flight_requests", revision="stable")
    assert gauge == 0


async def test_sigterm_lets_in_flight_requests_finish(
    tmp_path: Path, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    (tmp_path / "routes.json").write_text(json.dumps(table(upstreams, canary=0)))
    with start_router(tmp_path) as router:
        await router.wait_routes(session, table(upstreams, canary=0))
        slow = asyncio.create_task(call(session, f"{router.url}/slow?delay=1"))
        await asyncio.sleep(0.3)
        router.proc.terminate()
        answer = await slow
        assert (answer.status, answer.header, answer.body) == (200, "stable", "stable")
        assert await asyncio.to_thread(router.proc.wait, 10) == 0
    assert "draining in-flight requests" in router.tail()


async def test_the_canary_builtin_queries_read_the_router_metrics(
    router: Router, upstreams: dict[str, str], session: aiohttp.ClientSession
) -> None:
    """BUILTIN_QUERIES, as the canary sends them, against a real Prometheus."""
    doc = table(upstreams, canary=20, mirror=50, service="builtin-check")
    await router.use(session, doc)
    variables = {
        "namespace": "team-a",
        "service": "builtin-check",
        "revision": "canary",
        "interval": "1m",
    }
    queries = {
        check: resolve_query(MetricCheck(name=check.value, builtin=check, max=1.0), variables)
        for check in BuiltinCheck
    }
    target = router.metrics_url.removeprefix("http://")
    with prometheus.serve([(target, {})], interval="1s") as prom:
        warm = (
            'modelsmith_router_requests_total{service="builtin-check",revision="canary",'
            'code="502",shadow="false"}'
        )
        deadline = time.monotonic() + 30
        while promql.query(prom.url, warm) != 0.0:  # zero-valued first: errors then count
            assert time.monotonic() < deadline, "Prometheus never scraped the router"
            await asyncio.sleep(0.2)
        await fire(session, f"{router.url}/v1/models", 300, concurrency=8)
        await fire(
            session, f"{router.url}/fail", 10, concurrency=2, headers={REVISION_HEADER: "canary"}
        )
        await asyncio.sleep(0.5)  # the copies finish
        metrics = await router.metrics(session)
        mine = {"service": "builtin-check", "revision": "canary"}
        total = sample(metrics, "modelsmith_router_requests_total", **mine)
        errors = sample(metrics, "modelsmith_router_requests_total", code="502", **mine)
        assert errors == 10
        assert sample(metrics, "modelsmith_router_requests_total", shadow="true", **mine) > 50

        def settled() -> dict[BuiltinCheck, float | None]:
            values = {check: promql.query(prom.url, text) for check, text in queries.items()}
            rate = values[BuiltinCheck.ERROR_RATE]
            return (
                values
                if rate is not None and math.isclose(rate, errors / total, rel_tol=0.02)
                else {}
            )

        deadline = time.monotonic() + 20
        while not (values := settled()):
            assert time.monotonic() < deadline, {
                c: promql.query(prom.url, q) for c, q in queries.items()
            }
            await asyncio.sleep(0.5)
    latency = values[BuiltinCheck.LATENCY_P99]
    ttft = values[BuiltinCheck.TIME_TO_FIRST_TOKEN_P99]
    assert latency is not None and 0 < latency < 1.0
    assert ttft is not None and 0 < ttft < 1.0


async def test_configmap_source_follows_the_api_server(
    tmp_path: Path,
    upstreams: dict[str, str],
    session: aiohttp.ClientSession,
    namespace: str,
    kubeconfig: Path,
) -> None:
    core = client.CoreV1Api()
    name = "chat-routes"
    env = {"KUBECONFIG": str(kubeconfig)}
    with start_router(
        tmp_path, "--configmap", f"{namespace}/{name}", routes_file=False, env=env
    ) as router:
        await asyncio.sleep(1.0)
        assert (await call(session, f"{router.url}/v1/models")).status == 503
        stable_only = table(upstreams, canary=0)
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data={ROUTES_KEY: json.dumps(stable_only)}
        )
        core.create_namespaced_config_map(namespace, body)
        await router.wait_routes(session, stable_only, timeout=5)
        answers = await fire(session, f"{router.url}/v1/models", 50, concurrency=8)
        assert {(a.status, a.header) for a in answers} == {(200, "stable")}

        canary_only = table(upstreams, canary=100)
        patched = time.monotonic()
        core.patch_namespaced_config_map(
            name, namespace, {"data": {ROUTES_KEY: json.dumps(canary_only)}}
        )
        seen = await router.wait_routes(session, canary_only, timeout=5)
        assert seen - patched < 2.0, f"the change took {seen - patched:.2f}s"
        answers = await fire(session, f"{router.url}/v1/models", 50, concurrency=8)
        assert {(a.status, a.header) for a in answers} == {(200, "canary")}

        core.patch_namespaced_config_map(name, namespace, {"data": {ROUTES_KEY: "{}"}})
        core.delete_namespaced_config_map(name, namespace)
        await asyncio.sleep(1.0)
        status, text = await router.routes(session)
        assert (status, text) == (200, RouteTable.model_validate(canary_only).render())
        assert (await call(session, f"{router.url}/v1/models")).header == "canary"
    log = router.tail()
    assert "invalid route table" in log
    assert "deleted; keeping the table" in log
