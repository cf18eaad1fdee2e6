"""One request through the router: pick a revision, forward, stream back, maybe mirror.

Bodies of requests are read whole (an inference request is a prompt, and a mirrored
copy needs the bytes anyway); responses are relayed chunk by chunk as they arrive, so
server-sent events reach the client as the model emits them. Compression is passed
through untouched in both directions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from random import random
from time import perf_counter

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from modelsmith.router.table import LiveTable, Route, TableHolder
from modelsmith.router.upstream import UpstreamError, UpstreamPool
from modelsmith.routes import REVISION_HEADER

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "expect"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
SMALL_BODY = 64 * 1024
"""Responses of a known length up to this are relayed in one write, not streamed."""
CLIENT_CLOSED = 499
"""Recorded (as nginx does) when the client went away before the response ended."""


def error_response(status: int, message: str, revision: str | None = None) -> web.Response:
    """An OpenAI-style error body, which inference clients already know how to show."""
    body = {"error": {"message": message, "type": "router_error", "code": status}}
    response = web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )
    if revision is not None:
        response.headers[REVISION_HEADER] = revision
    return response


def _dropped(named: list[str], base: frozenset[str]) -> frozenset[str]:
    """``base`` and the headers a Connection header names as hop-by-hop."""
    if not named:
        return base
    return base | {token.strip().lower() for value in named for token in value.split(",")}


def request_headers(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    drop = _dropped(headers.getall("Connection", []), _DROP_REQUEST)
    return [(k, v) for k, v in headers.items() if k.lower() not in drop]


def response_headers(
    headers: list[tuple[str, str]], revision: str, keep_length: bool
) -> CIMultiDict[str]:
    named = [v for k, v in headers if k.lower() == "connection"]
    drop = _dropped(named, _DROP_RESPONSE if not keep_length else HOP_BY_HOP)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers:
        if key.lower() not in drop:
            out.add(key, value)
    out[REVISION_HEADER] = revision
    return out


class Proxy:
    """The request handler; owns the upstream pool and the in-flight mirror copies."""

    def __init__(self, holder: TableHolder, pool: UpstreamPool, max_mirrors: int) -> None:
        self.holder = holder
        self.pool = pool
        self.max_mirrors = max_mirrors
        self._mirrors: set[asyncio.Task[None]] = set()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = perf_counter()
        live = self.holder.live
        if live is None:
            return error_response(
                503, f"the router has no route table yet (waiting for {self.holder.source})"
            )
        pinned = request.headers.get(live.pin_header)
        if pinned is None:
            route = live.pick(random() * 100.0)  # noqa: S311 - a traffic split, not a secret
        else:
            found = live.by_name.get(pinned)
            if found is None:
                known = ", ".join(live.by_name)
                return error_response(
                    400,
                    f"{live.pin_header}: {pinned!r} is not a revision of this service "
                    f"(known: {known})",
                )
            route = found
        body = None
        if request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # the real response has not started
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                return error_response(413, exc.text or "request body too large", route.name)
        headers = request_headers(request.headers)
        mirror = live.mirror
        if mirror is not None and mirror is not route and random() < live.mirror_share:  # noqa: S311
            self._mirror(live, mirror, request, headers, body)
        return await self._forward(request, route, headers, body, started)

    async def _forward(
        self,
        request: web.BaseRequest,
        route: Route,
        headers: list[tuple[str, str]],
        body: bytes | None,
        started: float,
    ) -> web.StreamResponse:
        series = route.user
        series.in_flight.inc()
        code, first = 500, None
        response: web.StreamResponse | None = None
        method = request.method
        try:
            upstream = await self.pool.send(route.base, method, request.raw_path, headers, body)
            try:
                code = upstream.status
                length = upstream.length
                if length is not None and length <= SMALL_BODY and method != "HEAD":
                    data = await upstream.read()
                    first = perf_counter() if data else None
                    out = response_headers(upstream.headers, route.name, keep_length=False)
                    return web.Response(status=code, reason=upstream.reason, body=data, headers=out)
                out = response_headers(upstream.headers, route.name, keep_length=True)
                response = web.StreamResponse(status=code, reason=upstream.reason, headers=out)
                try:
                    await response.prepare(request)
                    async for chunk in upstream.chunks():  # upstream: UpstreamError
                        if first is None:
                            first = perf_counter()
                        await response.write(chunk)
                    await response.write_eof()
                except ConnectionError:  # only writes to the client raise these
                    code = CLIENT_CLOSED
                return response
            finally:
                upstream.release()
        except TimeoutError as exc:
            code = 504
            return self._failed(
                request, response=response, route=route, code=code, what="timed out", exc=exc
            )
        except (UpstreamError, OSError) as exc:
            code = 502
            return self._failed(
                request, response=response, route=route, code=code, what="failed", exc=exc
            )
        finally:
            series.in_flight.dec()
            series.record(code, started, perf_counter(), first)

    @staticmethod
    def _failed(
        request: web.BaseRequest,
        *,
        response: web.StreamResponse | None,
        route: Route,
        code: int,
        what: str,
        exc: BaseException,
    ) -> web.StreamResponse:
        detail = str(exc) or type(exc).__name__
        if response is None:
            message = f"revision {route.name} ({route.base}) {what}: {detail}"
            return error_response(code, message, route.name)
        # Headers are out: cut the connection so the client cannot take a truncated
        # body for a whole one.
        log.warning("revision %s %s mid-response: %s", route.name, what, detail)
        if request.transport is not None:
            request.transport.abort()
        return response

    def _mirror(
        self,
        live: LiveTable,
        route: Route,
        request: web.BaseRequest,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        if len(self._mirrors) >= self.max_mirrors:
            if live.mirror_dropped is not None:
                live.mirror_dropped.inc()
            return
        copy = self._shadow(route, request.method, request.raw_path, headers, body)
        task = asyncio.get_running_loop().create_task(copy)
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow(
        self,
        route: Route,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> None:
        """Send the copy and read its answer to the end; nothing of it reaches a client."""
        series = route.shadow
        series.in_flight.inc()
        started, code, first = perf_counter(), 500, None
        try:
            upstream = await self.pool.send(route.base, method, target, headers, body)
            try:
                code = upstream.status
                async for _chunk in upstream.chunks():
                    if first is None:
                        first = perf_counter()
            finally:
                upstream.release()
        except TimeoutError:
            code = 504
        except (UpstreamError, OSError):
            code = 502
        except asyncio.CancelledError:
            code = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("mirrored copy to %s failed", route.name)
        finally:
            series.in_flight.dec()
            series.record(code, started, perf_counter(), first)

    async def close(self) -> None:
        """Cancel the copies still in flight (on shutdown)."""
        for task in list(self._mirrors):
            task.cancel()
        await asyncio.gather(*self._mirrors, return_exceptions=True)
