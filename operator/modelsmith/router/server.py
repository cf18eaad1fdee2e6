"""`modelsmith router`: the two listeners, the upstream pool, and an orderly stop.

The main port proxies every path except `/-/…` (the router's own health and table).
/metrics is served on a port of its own, because the model servers behind the router
(vLLM, the builtin server) have a /metrics of their own that clients may reach through
it; health and the table are answered on both ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from modelsmith.router.metrics import RouterMetrics
from modelsmith.router.proxy import Proxy, error_response
from modelsmith.router.sources import ConfigMapSource, watch_file
from modelsmith.router.table import TableHolder
from modelsmith.router.upstream import UpstreamPool

log = logging.getLogger("modelsmith.router")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Options:
    routes_file: Path | None = None
    configmap: tuple[str, str] | None = None
    host: str = "0.0.0.0"  # noqa: S104 - it serves a Service: every interface, by design
    port: int = 8080
    metrics_port: int = 9090
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    max_mirrors: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    max_connections: int = 2048
    drain_seconds: float = 25.0

    @property
    def source(self) -> str:
        if self.configmap is not None:
            return f"configmap {self.configmap[0]}/{self.configmap[1]}"
        return f"file {self.routes_file}"


def _own(request: web.BaseRequest, holder: TableHolder) -> web.StreamResponse:
    """/-/healthy, /-/ready and /-/routes: never proxied."""
    path = request.path
    if path == "/-/healthy":
        return web.Response(text="ok\n")
    live = holder.live
    if path == "/-/ready":
        if live is None:
            return web.Response(status=503, text=f"no route table yet ({holder.source})\n")
        return web.Response(text="ready\n")
    if path == "/-/routes":
        if live is None:
            return error_response(503, f"no route table yet ({holder.source})")
        return web.Response(body=live.rendered, content_type="application/json")
    return error_response(404, f"{path}: the router answers /-/healthy, /-/ready, /-/routes")


def main_handler(proxy: Proxy) -> Handler:
    forward = proxy.handle

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path.startswith("/-/"):
            return _own(request, proxy.holder)
        return await forward(request)

    return handle


def metrics_handler(metrics: RouterMetrics, holder: TableHolder) -> Handler:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/metrics":
            payload = generate_latest(metrics.registry)
            return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
        return _own(request, holder)

    return handle


def _server(handler: Handler, max_body: int) -> web.Server:
    """A low-level server (no URL dispatch, no access log) with our body limit."""
    loop = asyncio.get_running_loop()

    def make_request(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=max_body
        )

    return web.Server(handler, request_factory=make_request, access_log=None, auto_decompress=False)


async def serve(options: Options) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight requests for `drain_seconds`."""
    loop = asyncio.get_running_loop()
    metrics = RouterMetrics()
    holder = TableHolder(metrics, options.source)
    async with contextlib.AsyncExitStack() as stack:
        pool = UpstreamPool(
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            max_connections=options.max_connections,
        )
        stack.callback(pool.close)
        proxy = Proxy(holder, pool, options.max_mirrors)
        stack.push_async_callback(proxy.close)
        listeners = (  # unwound in reverse: the proxy drains while /metrics still answers
            (metrics_handler(metrics, holder), options.metrics_port, 1024, 1.0),
            (main_handler(proxy), options.port, options.max_body_bytes, options.drain_seconds),
        )
        for handler, port, max_body, drain in listeners:
            runner = web.ServerRunner(_server(handler, max_body), shutdown_timeout=drain)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)  # runs first: stop listening, drain
            await web.TCPSite(runner, options.host, port, reuse_address=True).start()
        if options.configmap is not None:
            source = ConfigMapSource(*options.configmap, holder, loop)
            source.start()
            stack.callback(source.stop)
        elif options.routes_file is not None:
            watcher = loop.create_task(watch_file(options.routes_file, holder))
            stack.callback(watcher.cancel)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "router on %s:%d (metrics :%d), routes from %s",
            options.host,
            options.port,
            options.metrics_port,
            options.source,
        )
        await stop.wait()
        log.info("stopping: draining in-flight requests (up to %.0fs)", options.drain_seconds)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed: an optional speed-up, not a dependency."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(options: Options) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise here
    factory = _loop_factory()
    log.info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(serve(options))
        except OSError as exc:  # a port in use, most likely
            log.error("router cannot start: %s", exc)
            return 1
    return 0
