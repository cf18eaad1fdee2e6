"""The router's HTTP/1.1 client for its upstreams: keep-alive pools, httptools parsing.

aiohttp's client cost the router more CPU per request than the whole model server
behind it. A proxy needs little of it: one request written whole, the answer's head
parsed, its body handed on chunk by chunk as it arrives, and the connection kept for
the next request only after an answer that ended cleanly.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from time import monotonic
from typing import cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
"""Stop reading from an upstream while this much of its body waits for a slow client."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Sent again on a fresh connection when a kept-alive one turns out to be closed."""


class UpstreamError(Exception):
    """The upstream refused, reset or closed the connection early, or spoke bad HTTP."""


class _Endpoint:
    __slots__ = ("host", "host_header", "port", "prefix", "tls")

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.host = url.hostname or ""
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.host_header = url.netloc.rpartition("@")[2]
        self.prefix = url.path.rstrip("/")


class _Connection(asyncio.Protocol):
    """One connection and the answer being read on it (at most one at a time)."""

    transport: asyncio.Transport  # set as soon as it is made, before any use

    def __init__(self, base: str, read_timeout: float) -> None:
        self.base = base
        self.loop = asyncio.get_running_loop()
        self.read_timeout = read_timeout
        # received: any byte of the current answer; head_done: its status and headers
        self.closed = self.received = self.head_done = self.done = self.keep_alive = False
        self.chunked = self._skip_body = self._paused = False
        self.idle_since, self.status, self.reason, self._size = 0.0, 0, b"", 0
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: list[tuple[str, str]] = []
        self.length: int | None = None
        self.error: Exception | None = None
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None

    def send(self, payload: bytes, skip_body: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.received = self.head_done = self.done = self.keep_alive = False
        self._skip_body = skip_body
        self.transport.write(payload)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self.done:  # nothing was asked: not HTTP we can follow
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = UpstreamError(f"invalid HTTP from upstream: {exc}")
            self.close()
            self._wake()
            return
        if self._size > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is not None and not self.done and self.error is None:
            if self.head_done and self.length is None and not self.chunked:
                self.done = True  # a body that ends when the connection does
            else:
                why = f": {exc}" if exc else ""
                self.error = UpstreamError(f"upstream closed the connection early{why}")
        self._wake()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.head_done:
            raise UpstreamError("a second answer to one request")
        self.reason, self.headers, self.length, self.chunked = b"", [], None, False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1"), value.decode("utf-8", "surrogateescape")
        self.headers.append((key, text))
        lowered = key.lower()
        if lowered == "content-length":
            self.length = int(value)
        elif lowered == "transfer-encoding":
            self.chunked = "chunked" in text.lower()

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser is None:
            return
        self.status = parser.get_status_code()
        if not 100 <= self.status < 200:  # an interim answer is skipped
            self.head_done = True
            self.keep_alive = parser.should_keep_alive()
            if self._skip_body:
                self.done = True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True

    # the reading side

    def take(self) -> bytes:
        """The body received so far and not yet taken."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        if self._paused and not self.closed:
            self._paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def wait(self) -> None:
        """Until more of the answer is here; TimeoutError after `read_timeout` of silence."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(self.read_timeout, self._expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError(f"no answer for {self.read_timeout:g}s"))

    def close(self, abort: bool = True) -> None:
        """Reset the connection; or, after an answer that ended, close it politely."""
        self.closed = True
        if abort:
            self.transport.abort()
        else:
            self.transport.close()


class Response:
    """An upstream's answer: the head at once, the body as it comes; `release()` it."""

    __slots__ = ("_conn", "_pool", "_released", "headers", "length", "reason", "status")

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool, self._conn, self._released = pool, conn, False
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1").strip() or None  # None: the usual one
        self.headers = conn.headers
        self.length = conn.length

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, one chunk per batch received from the upstream."""
        conn = self._conn
        while True:
            if data := conn.take():
                yield data
            elif conn.done:
                return
            else:
                await conn.wait()

    def release(self) -> None:
        """Give the connection back for reuse if the answer ended cleanly, else close it."""
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class UpstreamPool:
    """Kept-alive connections per upstream, most recently used first."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive: float = 30.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self._slots = asyncio.Semaphore(max_connections)
        self._endpoints: dict[str, _Endpoint] = {}
        self._idle: dict[str, deque[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def send(
        self,
        base: str,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
    ) -> Response:
        """Send one request and wait for the head of its answer."""
        endpoint = self._endpoints.get(base)
        if endpoint is None:
            endpoint = self._endpoints[base] = _Endpoint(base)
        lines = [f"{method} {endpoint.prefix}{target} HTTP/1.1\r\nHost: {endpoint.host_header}"]
        lines += [f"{key}: {value}" for key, value in headers]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body) if body else 0}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        payload = head + body if body else head
        await self._slots.acquire()
        try:
            while True:
                conn, reused = await self._acquire(base, endpoint)
                try:
                    conn.send(payload, skip_body=method == "HEAD")
                    while not conn.head_done:
                        await conn.wait()
                    return Response(self, conn)
                except UpstreamError:
                    conn.close()
                    if not (reused and not conn.received and method in IDEMPOTENT):
                        raise
                except BaseException:
                    conn.close()
                    raise
        except BaseException:
            self._slots.release()
            raise

    async def _acquire(self, base: str, endpoint: _Endpoint) -> tuple[_Connection, bool]:
        idle = self._idle.get(base)
        while idle:
            conn = idle.pop()
            if not conn.closed and monotonic() - conn.idle_since < self.keepalive:
                return conn, True
            conn.close()
        self._sweep()
        loop = asyncio.get_running_loop()
        if endpoint.tls and self._tls is None:
            self._tls = ssl.create_default_context()
        tls = self._tls if endpoint.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(base, self.read_timeout),
                    endpoint.host,
                    endpoint.port,
                    ssl=tls,
                    server_hostname=endpoint.host if tls else None,
                )
        except TimeoutError as exc:
            where = f"{endpoint.host}:{endpoint.port}"
            raise TimeoutError(f"no connection to {where} in {self.connect_timeout:g}s") from exc
        except OSError as exc:
            raise UpstreamError(
                f"cannot connect to {endpoint.host}:{endpoint.port}: {exc}"
            ) from exc
        conn.idle_since = monotonic()
        return conn, False

    def release(self, conn: _Connection) -> None:
        self._slots.release()
        conn.parser = None
        if not (conn.done and conn.keep_alive) or conn.closed or conn.error is not None:
            conn.close(abort=not conn.done)
            return
        now = conn.idle_since = monotonic()
        idle = self._idle.setdefault(conn.base, deque())
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive):
            idle.popleft().close()
        idle.append(conn)

    def _sweep(self) -> None:
        """Forget closed and stale idle connections, those of removed revisions included."""
        now = monotonic()
        for base, idle in list(self._idle.items()):
            for conn in [c for c in idle if c.closed or now - c.idle_since >= self.keepalive]:
                idle.remove(conn)
                conn.close()
            if not idle:
                del self._idle[base]

    def close(self) -> None:
        """Close every idle connection (on shutdown)."""
        for idle in self._idle.values():
            while idle:
                idle.popleft().close()
