"""OpenAI's /v1/completions, /v1/chat/completions and /v1/models, as vLLM serves them.

KServe 0.21 has these routes (kserve.protocol.rest.openai), but its request and
response types are vLLM's own pydantic classes, imported from the `vllm` package, and
vLLM 0.24 pins torch 2.11: that layer cannot be installed next to torch 2.15. So the
routes are here, on KServe's FastAPI app, at the paths vLLM uses (/v1/...) and at the
ones KServe would use (/openai/v1/...), registered before KServe's own routes: KServe
also answers GET /v1/models (its v1 protocol's model list), and the OpenAI list wins,
with KServe's {"models": [...]} key added so both kinds of client read it.

Streams are server-sent events (`data: {json}\\n\\n`, ending `data: [DONE]`). A request
whose first token already fails is answered with an HTTP error; a failure after the
first chunk can only be reported in the stream, as vLLM does, with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelsmith_runtime.serve.engine import Event, Stream
from modelsmith_runtime.serve.sampling import SamplingParams
from modelsmith_runtime.serve.service import Generation, ServeError, Service, gather

COMPLETION_DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) default for /v1/completions; chat defaults to the limit."""
ModelT = TypeVar("ModelT", bound=BaseModel)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    """vLLM's extension, for benchmarks that need a fixed output length."""


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def plain(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    tools: list[Any] | None = None


async def _parse(request: Request, model: type[ModelT]) -> ModelT:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ServeError(400, f"the request body is not JSON: {exc}") from exc
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ServeError(400, detail) from exc


def _unsupported(body: _Common) -> None:
    """What the built-in runtime does not do, refused rather than silently ignored."""
    if body.n != 1:
        raise ServeError(400, "n > 1 is not supported by the builtin runtime", param="n")
    if isinstance(body, CompletionRequest) and (body.echo or body.logprobs):
        raise ServeError(400, "echo and logprobs are not supported by the builtin runtime")
    if isinstance(body, ChatCompletionRequest) and (body.logprobs or body.tools):
        raise ServeError(400, "logprobs and tools are not supported by the builtin runtime")


def _prompts(raw: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """OpenAI's prompt field: one prompt (text or token ids) or a list of them."""
    if not raw and not isinstance(raw, str):
        raise ServeError(400, "the prompt is empty", param="prompt")
    if isinstance(raw, str):
        return [raw]
    if raw and all(isinstance(t, int) for t in raw):
        return [cast(list[int], raw)]
    return list(cast(list[str | list[int]], raw))


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _merge(
    sources: list[AsyncGenerator[Event, None]],
) -> AsyncGenerator[tuple[int, Event], None]:
    """Events of several requests (one per prompt) as they come, tagged by index."""
    if len(sources) == 1:
        async with contextlib.aclosing(sources[0]):
            async for event in sources[0]:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()

    async def pump(index: int, source: AsyncGenerator[Event, None]) -> None:
        async with contextlib.aclosing(source):
            async for event in source:
                await queue.put((index, event))
        await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sources)]
    try:
        left = len(tasks)
        while left:
            index, got = await queue.get()
            if got is None:
                left -= 1
            else:
                yield index, got
    finally:
        for task in tasks:
            task.cancel()


ChunkFn = Callable[[int, Event, bool], dict[str, Any]]


class OpenAIRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.service.name,
        }

    async def models(self) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": self.service.name,
            "object": "model",
            "created": self.created,
            "owned_by": "modelsmith",
            "root": self.service.settings.model_uri,
        }
        if self.service.engine.loaded.is_set():
            card["max_model_len"] = self.service.engine.context_length
        return {"object": "list", "data": [card], "models": [self.service.name]}

    async def health(self) -> Response:
        ready = self.service.engine.loaded.is_set()
        return Response(status_code=200 if ready else 503)

    async def _run(
        self,
        *,
        prompts: list[list[int]],
        params: list[SamplingParams],
        body: _Common,
        kind: str,
        chunk: ChunkFn,
        answer: Callable[[list[Generation]], dict[str, Any]],
    ) -> Response:
        if not body.stream:
            results = await gather(
                [self.service.generate(p, s) for p, s in zip(prompts, params, strict=True)]
            )
            return JSONResponse(answer(results))
        started = await gather(
            [self.service.start(p, s) for p, s in zip(prompts, params, strict=True)],
            undo=lambda opened: opened[0].cancel(),
        )
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            self._stream(started, kind, chunk, usage), media_type="text/event-stream"
        )

    async def _stream(
        self, started: list[tuple[Stream, Event]], kind: str, chunk: ChunkFn, usage: bool
    ) -> AsyncIterator[str]:
        head = self._head(kind)
        sources = [self.service.events(stream, first) for stream, first in started]
        seen: set[int] = set()
        totals: dict[int, tuple[int, int]] = {}
        async with contextlib.aclosing(_merge(sources)) as merged:
            async for index, event in merged:
                if event.error is not None:
                    yield _sse(ServeError(500, event.error, kind="server_error").body())
                    break
                if event.text or event.finish_reason or index not in seen:
                    yield _sse({**head, "choices": [chunk(index, event, index not in seen)]})
                    seen.add(index)
                totals[index] = (event.prompt_tokens, event.completion_tokens)
        if usage:
            prompt = sum(p for p, _ in totals.values())
            completion = sum(c for _, c in totals.values())
            yield _sse({**head, "choices": [], "usage": _usage(prompt, completion)})
        yield _sse("[DONE]")

    async def completions(self, request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        self.service.require_ready(body.model)
        _unsupported(body)
        prompts = [self.service.encode(p) for p in _prompts(body.prompt)]
        default = COMPLETION_DEFAULT_MAX_TOKENS
        params = [self._params(body, p, body.max_tokens, default) for p in prompts]

        def chunk(index: int, event: Event, first: bool) -> dict[str, Any]:
            return {
                "index": index,
                "text": event.text,
                "logprobs": None,
                "finish_reason": event.finish_reason,
            }

        def answer(results: list[Generation]) -> dict[str, Any]:
            choices = [
                {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                for i, r in enumerate(results)
            ]
            usage = _usage(
                sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
            )
            return {**self._head("text_completion"), "choices": choices, "usage": usage}

        return await self._run(
            prompts=prompts,
            params=params,
            body=body,
            kind="text_completion",
            chunk=chunk,
            answer=answer,
        )

    async def chat_completions(self, request: Request) -> Response:
        body = await _parse(request, ChatCompletionRequest)
        self.service.require_ready(body.model)
        _unsupported(body)
        prompt = self.service.chat_prompt([m.plain() for m in body.messages])
        limit = body.max_completion_tokens or body.max_tokens
        params = [self._params(body, prompt, limit, None)]

        def chunk(index: int, event: Event, first: bool) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if event.text or first:
                delta["content"] = event.text
            return {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": event.finish_reason,
            }

        def answer(results: list[Generation]) -> dict[str, Any]:
            r = results[0]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None,
                "finish_reason": r.finish_reason,
            }
            usage = _usage(r.prompt_tokens, r.completion_tokens)
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}

        return await self._run(
            prompts=[prompt],
            params=params,
            body=body,
            kind="chat.completion.chunk",
            chunk=chunk,
            answer=answer,
        )

    def _params(
        self, body: _Common, prompt: list[int], limit: int | None, default: int | None
    ) -> SamplingParams:
        return self.service.sampling(
            prompt,
            max_tokens=limit,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop,
            ignore_eos=body.ignore_eos,
            default_max_tokens=default,
        )


def register(app: FastAPI, service: Service) -> None:
    """The routes, at /v1 and /openai/v1; call before KServe adds its own."""
    routes = OpenAIRoutes(service)
    for prefix in ("", "/openai"):
        app.add_api_route(f"{prefix}/v1/completions", routes.completions, methods=["POST"])
        app.add_api_route(
            f"{prefix}/v1/chat/completions", routes.chat_completions, methods=["POST"]
        )
        app.add_api_route(f"{prefix}/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/health", routes.health, methods=["GET"])

    async def serve_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServeError)  # noqa: S101 (registered for ServeError only)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    app.add_exception_handler(ServeError, serve_error)
