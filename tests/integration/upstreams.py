"""Tiny upstreams for the router tests: model servers that only say who they are.

Run as a process, `python tests/integration/upstreams.py stable canary`, it serves one
upstream per name on a free loopback port and prints `{"stable": port, ...}` once all
listen. Every upstream answers any path with JSON naming itself and echoing what it got,
and counts what it served; a few paths misbehave on request:

- `/_stats` (not counted): `{"name": …, "requests": n}`; `POST /_config {"delay": s}`
  makes every later answer wait s seconds.
- `/slow?delay=S`: answers after S seconds.
- `/fail`: drops the connection without answering; `/break`: drops it after sending
  the headers and one event of a stream.
- `/stream?chunks=N&gap=S`, or `POST /v1/chat/completions` with `"stream": true`:
  server-sent events, N chunks S seconds apart, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

from aiohttp import web

STATS = web.AppKey("stats", dict)


def sse_chunks(name: str, count: int) -> list[bytes]:
    """The exact bytes a streaming answer is made of, so a test can compare them."""
    chunks = [
        f"data: {json.dumps({'revision': name, 'index': i, 'delta': f'tok{i} '})}\n\n".encode()
        for i in range(count)
    ]
    return [*chunks, b"data: [DONE]\n\n"]


async def _stream(request: web.Request, name: str, count: int, gap: float) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, chunk in enumerate(sse_chunks(name, count)):
        if i:
            await asyncio.sleep(gap)
        await response.write(chunk)
    await response.write_eof()
    return response


async def _answer(request: web.Request) -> web.StreamResponse:
    stats: dict[str, Any] = request.app[STATS]
    name: str = stats["name"]
    path = request.path
    if path == "/_stats":
        return web.json_response({"name": name, "requests": stats["requests"]})
    if path == "/_config":
        stats["delay"] = float((await request.json()).get("delay", 0.0))
        return web.json_response({"name": name, "delay": stats["delay"]})
    stats["requests"] += 1
    body = await request.read()
    if stats["delay"]:
        await asyncio.sleep(stats["delay"])
    query = request.query
    if path == "/fail":
        assert request.transport is not None
        request.transport.abort()
        return web.Response()
    if path == "/break":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse_chunks(name, 1)[0])
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.abort()
        return response
    if path == "/slow":
        await asyncio.sleep(float(query.get("delay", "1")))
    wants_stream = path == "/stream"
    if path == "/v1/chat/completions" and body:
        wants_stream = bool(json.loads(body).get("stream"))
    if wants_stream:
        return await _stream(
            request, name, int(query.get("chunks", "5")), float(query.get("gap", "0.2"))
        )
    return web.json_response(
        {
            "revision": name,
            "method": request.method,
            "path": path,
            "raw_path": request.raw_path,
            "body": body.decode(errors="replace"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        },
        headers={"X-Upstream": name, "Set-Cookie": f"upstream={name}"},
    )


def make_app(name: str) -> web.Application:
    app = web.Application()
    app[STATS] = {"name": name, "requests": 0, "delay": 0.0}
    app.router.add_route("*", "/{tail:.*}", _answer)
    return app


async def serve(names: list[str]) -> None:
    ports: dict[str, int] = {}
    for name in names:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        runner = web.AppRunner(make_app(name), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        ports[name] = sock.getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
