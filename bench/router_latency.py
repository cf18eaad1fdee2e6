"""Latency the built-in router adds in front of a model server, on loopback.

A fast upstream (a fixed small JSON answer, or with `--payload sse` a short
server-sent-event stream) runs in a process of its own; `modelsmith router` runs as it
does in a pod, in front of it. The load is open loop: requests start on a fixed
schedule of `--rate` per second per path, whether or not earlier ones have finished,
rotating between the upstream called directly (the baseline), the router, and a bare
aiohttp relay (server + pooled client, nothing else: the floor any aiohttp-based proxy
pays), so all three see the same machine at the same moment. Latency runs from sending
the request to the end of the response body, measured by the same client for all.

    .venv/bin/python bench/router_latency.py [--rate 200] [--seconds 20] [--payload json|sse]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

GOAL_ADDED_P99_MS = 2.0
ANSWER = json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "ok"}]})
SSE_EVENTS = 8
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
PATHS = ("direct (baseline)", "through the router", "bare aiohttp relay")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        return importlib.import_module("uvloop").new_event_loop()  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.new_event_loop()


def listen(handler: Handler, port: int) -> None:
    async def main() -> None:
        runner = web.ServerRunner(web.Server(handler, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


def serve_upstream(port: int) -> None:
    """The model server stand-in: as cheap per request as aiohttp allows."""
    body = ANSWER.encode()
    events = [
        f"data: {json.dumps({'i': i, 'delta': 'tok'})}\n\n".encode() for i in range(SSE_EVENTS)
    ]

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        if request.path != "/sse":
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    listen(handle, port)


def serve_relay(port: int, upstream: str) -> None:
    """Forward and relay, chunk by chunk; no routing, headers or metrics."""
    session: aiohttp.ClientSession | None = None

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(auto_decompress=False)
        body = await request.read()
        async with session.request(request.method, upstream + request.raw_path, data=body) as up:
            response = web.StreamResponse(status=up.status)
            response.content_type = up.content_type
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    listen(handle, port)


def start(args: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{args[:3]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{args[:3]} not listening on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    urls: list[str], rate: float, seconds: float, payload: str
) -> tuple[list[list[float]], int]:
    """Open loop: request i starts at i / (len(urls) * rate) s, rotating over the urls."""
    latencies: list[list[float]] = [[] for _ in urls]
    failures = 0
    path = "/sse" if payload == "sse" else "/v1/completions"
    body = b'{"model": "m", "prompt": "hello", "max_tokens": 1}'
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(which: int) -> None:
            nonlocal failures
            started = time.perf_counter()
            async with session.post(urls[which] + path, data=body) as answer:
                await answer.read()
                ok = answer.status == 200
            if ok:
                latencies[which].append((time.perf_counter() - started) * 1000)
            else:
                failures += 1

        loop = asyncio.get_running_loop()
        gap = 1 / (len(urls) * rate)
        start_at = loop.time()
        tasks = []
        for i in range(int(len(urls) * rate * seconds)):
            delay = start_at + i * gap - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i % len(urls))))
        await asyncio.gather(*tasks)
    return latencies, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s on each path")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured lead-in (s)")
    parser.add_argument("--payload", choices=["json", "sse"], default="json")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.serve_relay:
        serve_relay(int(args.serve_relay[0]), args.serve_relay[1])
        return 0

    up_port, port, metrics_port, relay_port = (free_port() for _ in range(4))
    upstream_url = f"http://127.0.0.1:{up_port}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp:
        routes = Path(tmp) / "routes.json"
        table = {
            "namespace": "bench",
            "service": "chat",
            "revisions": [{"name": "stable", "url": upstream_url, "weight": 100}],
        }
        routes.write_text(json.dumps(table))
        modelsmith = str(Path(sys.executable).parent / "modelsmith")
        try:
            procs.append(
                start(
                    [sys.executable, __file__, "--serve-upstream", str(up_port)],
                    Path(tmp) / "upstream.log",
                    up_port,
                )
            )
            procs.append(
                start(
                    [
                        modelsmith,
                        "router",
                        "--routes-file",
                        str(routes),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--metrics-port",
                        str(metrics_port),
                    ],
                    Path(tmp) / "router.log",
                    port,
                )
            )
            procs.append(
                start(
                    [sys.executable, __file__, "--serve-relay", str(relay_port), upstream_url],
                    Path(tmp) / "relay.log",
                    relay_port,
                )
            )
            urls = [upstream_url, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{relay_port}"]
            with asyncio.Runner(loop_factory=new_loop) as runner:
                runner.run(load(urls, args.rate, args.warmup, args.payload))
                before = [cpu_seconds(p.pid) for p in procs] + [time.process_time()]
                latencies, failures = runner.run(load(urls, args.rate, args.seconds, args.payload))
                after = [cpu_seconds(p.pid) for p in procs] + [time.process_time()]
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    direct, routed, relayed = latencies
    loop_kind = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(
        f"router_latency: open loop, {args.rate:.0f} req/s per path for {args.seconds:.0f}s "
        f"({sum(map(len, latencies))} requests, {failures} failed), payload {args.payload}, "
        f"event loop {loop_kind}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    for label, values in zip(PATHS, latencies, strict=True):
        print(
            f"{label:<20} p50 {pct(values, 0.5):6.3f} ms   p90 {pct(values, 0.9):6.3f} ms   "
            f"p99 {pct(values, 0.99):6.3f} ms   max {max(values):6.2f} ms"
        )
    requests = len(routed)
    cpu_us = [(b - a) * 1e6 / max(requests, 1) for a, b in zip(before, after, strict=True)]
    print(
        f"CPU per request: router {cpu_us[1]:.0f} us, bare relay {cpu_us[2]:.0f} us, "
        f"upstream {cpu_us[0] / 3:.0f} us, load generator {cpu_us[3] / 3:.0f} us"
    )
    for label, values in (("router", routed), ("bare relay", relayed)):
        print(
            f"added by the {label}: p50 +{pct(values, 0.5) - pct(direct, 0.5):.3f} ms, "
            f"p99 +{pct(values, 0.99) - pct(direct, 0.99):.3f} ms"
        )
    added99 = pct(routed, 0.99) - pct(direct, 0.99)
    verdict = "met" if added99 <= GOAL_ADDED_P99_MS else "NOT met"
    print(
        f"ratio p99 router/direct {pct(routed, 0.99) / pct(direct, 0.99):.2f}, "
        f"router/bare relay {pct(routed, 0.99) / pct(relayed, 0.99):.2f}; "
        f"goal: added p99 <= {GOAL_ADDED_P99_MS:.0f} ms ({verdict})"
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
