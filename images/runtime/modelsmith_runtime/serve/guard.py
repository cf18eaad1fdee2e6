"""API keys, request limits and HTTP metrics, in front of every route of the server.

A plain ASGI middleware rather than FastAPI dependencies, because KServe's own routes
(/v1/models/<m>:predict, /v2/models/<m>/infer) must be guarded exactly like ours and
cannot be given dependencies; and rather than Starlette's BaseHTTPMiddleware, which
runs the app in a task of its own and relays streamed bodies through a channel.
In-flight counts last from the request's headers (an upload in progress holds its
slot) to a streamed answer's last byte, so maxConcurrentRequests bounds generation,
not just request parsing.

Health, readiness and /metrics stay open: the kubelet and Prometheus carry no key.
KServe's model repository routes (load/unload) are refused: an unload would stop the
only model this process serves.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modelsmith_runtime.serve.metrics import ServeMetrics
from modelsmith_runtime.serve.service import ServeError
from modelsmith_runtime.serve.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN = re.compile(
    r"^/(|metrics|health|v2|v2/health/(live|ready)|v1/models/[^/:]+|"
    r"v2/models/[^/]+(/versions/[^/]+)?/ready)$"
)
"""Probes and scrapes: no key, no limit."""
GENERATION = (
    (re.compile(r"^(/openai)?/v1/completions$"), "/v1/completions"),
    (re.compile(r"^(/openai)?/v1/chat/completions$"), "/v1/chat/completions"),
    (re.compile(r"^/v1/models/[^/]+:predict$"), "/v1/models/{model}:predict"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "/v2/models/{model}/infer"),
)
"""Routes that reach the engine: counted against the concurrency and rate limits."""
REFUSED = re.compile(r"^/v2/repository/")
WINDOW_S = 60.0
DRAIN_FACTOR = 4


def handler_of(path: str) -> tuple[str, bool]:
    """The metrics label for a path (bounded: no model names, no junk paths), and
    whether it generates."""
    for pattern, label in GENERATION:
        if pattern.match(path):
            return label, True
    if OPEN.match(path):
        return re.sub(r"^/(v1|v2)/models/[^/]+", r"/\1/models/{model}", path), False
    if re.match(r"^(/openai)?/v1/models$", path):
        return "/v1/models", False
    return "other", False


class RateLimiter:
    """requestsPerMinute per API key over a sliding minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float:
        """0 when the request may go (and it is counted), else seconds to wait."""
        seen = self._seen.setdefault(key, deque())
        while seen and seen[0] <= now - WINDOW_S:
            seen.popleft()
        if len(seen) >= self.per_minute:
            return seen[0] + WINDOW_S - now
        seen.append(now)
        return 0.0


class Guard:
    def __init__(self, app: App, *, settings: Settings, metrics: ServeMetrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.in_flight = 0
        rpm = settings.limits.requests_per_minute
        self.rate = RateLimiter(rpm) if rpm else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        handler, generates = handler_of(path)
        status = [500]

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            if OPEN.match(path) and method in ("GET", "HEAD"):
                await self.app(scope, receive, tracked)
            else:
                await self._guarded(scope, receive, tracked, generates)
        except ServeError as exc:
            await _reply(tracked, exc)
        finally:
            self.metrics.http(handler, method, status[0], time.perf_counter() - started)

    def _key(self, scope: Scope) -> str:
        """The caller's key; 401 without a bearer token, 403 with a wrong one."""
        keys = self.settings.api_keys
        if keys is None:
            return ""
        raw: bytes = dict(scope["headers"]).get(b"authorization", b"")
        header = raw.decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ServeError(
                401,
                "missing API key: send the header `Authorization: Bearer <key>`",
                kind="authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys.current()):
            raise ServeError(403, "the API key is not valid", kind="permission_error")
        return token

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, generates: bool) -> None:
        if REFUSED.match(scope["path"]):
            raise ServeError(404, "the model repository API is disabled on this server")
        key = self._key(scope)
        if not generates:
            body = await self._body(scope, receive)
            await self.app(scope, _replay(body, receive), send)
            return
        limits = self.settings.limits
        if self.in_flight >= limits.max_concurrent_requests:
            raise ServeError(
                429,
                f"too many requests in flight: this server handles "
                f"limits.maxConcurrentRequests={limits.max_concurrent_requests} at once",
                kind="rate_limit_error",
            )
        self.in_flight += 1  # from here on: a request still uploading holds its slot too
        self.metrics.in_flight.set(self.in_flight)
        try:
            self._rate(key)
            body = await self._body(scope, receive)
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    def _rate(self, key: str) -> None:
        if self.rate is None:
            return
        wait = self.rate.retry_after(key, time.monotonic())
        if wait > 0:
            raise ServeError(
                429,
                f"rate limit reached: limits.requestsPerMinute={self.rate.per_minute} "
                f"per API key; retry in {math.ceil(wait)}s",
                kind="rate_limit_error",
                headers={"Retry-After": str(math.ceil(wait))},
            )

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, or 413 past limits.maxBodyBytes (the rest drained, within
        reason, so the client reads the answer instead of a reset connection)."""
        limit = self.settings.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        chunks: list[bytes] = []
        size, more = 0, True
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                too_big = True
            if too_big:
                if size > DRAIN_FACTOR * limit:
                    break
                continue
            chunks.append(chunk)
        if too_big:
            raise ServeError(
                413,
                f"the request body ({declared.decode() if declared else f'over {size}'} bytes) "
                f"is larger than limits.maxBodyBytes={limit}",
            )
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, error: ServeError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
