"""What every API in front of the engine shares: prompts, limits, errors, results.

The OpenAI routes and KServe's v1/v2 predict both go through `Service`, so a limit is
enforced, and worded, the same way whichever API a client speaks. Errors are OpenAI's
shape ({"error": {"message", "type", "param", "code"}}), which OpenAI clients show to
their users as they are; each limit's message names the limit and its value, so a
client that hits one knows which knob of the InferenceService to ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelsmith_runtime.chattemplate import DEFAULT_CHAT_TEMPLATE
from modelsmith_runtime.serve.engine import Engine, Event, Stream
from modelsmith_runtime.serve.metrics import ServeMetrics
from modelsmith_runtime.serve.sampling import SamplingParams
from modelsmith_runtime.serve.settings import Settings

FALLBACK_CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE
"""For tokenizers without a chat template: a base model still answers a chat request."""


class ServeError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.kind, "param": self.param}
        return {"error": {**error, "code": self.status}}


async def gather(
    coros: list[Coroutine[Any, Any, Any]], undo: Callable[[Any], None] | None = None
) -> list[Any]:
    """All results (one per prompt of a request), or the first ServeError with the
    other prompts' generation cancelled (and ``undo`` called on those that had
    already returned, e.g. streams that nobody will read)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as errors:
        for task in tasks:
            if undo and task.done() and not task.cancelled() and task.exception() is None:
                undo(task.result())
        serve = [e for e in errors.exceptions if isinstance(e, ServeError)]
        raise (serve[0] if serve else errors.exceptions[0]) from None
    return [t.result() for t in tasks]


@dataclass(frozen=True)
class Generation:
    """A finished request, for the non-streaming answers."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Service:
    def __init__(self, settings: Settings, engine: Engine, metrics: ServeMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics

    @property
    def name(self) -> str:
        return self.settings.served_name

    def require_ready(self, model: str | None) -> None:
        if model and model != self.name:
            raise ServeError(
                404,
                f"The model `{model}` does not exist; this server serves `{self.name}`.",
                kind="model_not_found",
                param="model",
            )
        if not self.engine.loaded.is_set():
            raise ServeError(503, f"model {self.name} is still loading", kind="server_error")

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids: list[int] = self.engine.tokenizer(prompt)["input_ids"]
            return ids
        vocab = len(self.engine.tokenizer)
        if any(not 0 <= t < vocab for t in prompt):
            raise ServeError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        return list(prompt)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        tokenizer = self.engine.tokenizer
        template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
        try:
            text = tokenizer.apply_chat_template(
                messages, chat_template=template, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja raises TemplateError, or anything a template raises
            raise ServeError(400, f"the chat template failed: {exc}", param="messages") from exc
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def sampling(
        self,
        prompt: list[int],
        *,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: str | list[str] | None,
        ignore_eos: bool = False,
        default_max_tokens: int | None = None,
    ) -> SamplingParams:
        """The request's sampling parameters, once its prompt and length fit the limits."""
        limits, context = self.settings.limits, self.engine.context_length
        if not prompt:
            raise ServeError(400, "the prompt is empty", param="prompt")
        if len(prompt) > limits.max_prompt_tokens:
            raise ServeError(
                400,
                f"the prompt has {len(prompt)} tokens, more than this server accepts "
                f"(limits.maxPromptTokens={limits.max_prompt_tokens})",
                param="prompt",
            )
        if len(prompt) >= context:
            raise ServeError(
                400,
                f"the prompt has {len(prompt)} tokens and this model's context is {context} "
                "tokens: nothing is left to generate",
                param="prompt",
            )
        if max_tokens is not None and max_tokens > limits.max_tokens:
            raise ServeError(
                400,
                f"max_tokens={max_tokens} is more than this server allows "
                f"(limits.maxTokens={limits.max_tokens})",
                param="max_tokens",
            )
        if max_tokens is None:
            max_tokens = min(default_max_tokens or limits.max_tokens, limits.max_tokens)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return SamplingParams(max_tokens, temperature, top_p, seed, tuple(stops), ignore_eos)

    async def start(self, prompt: list[int], params: SamplingParams) -> tuple[Stream, Event]:
        """Submit, and wait for the first event, so that a request failing at once (a
        broken model) is answered with an HTTP error rather than a 200 stream."""
        stream = self.engine.submit(prompt, params)
        try:
            first = await stream.next()
        except BaseException:
            stream.cancel()
            raise
        if first.error is not None:
            raise ServeError(500, first.error, kind="server_error")
        return stream, first

    async def events(self, stream: Stream, first: Event) -> AsyncGenerator[Event, None]:
        """``first``, then the rest; the row is dropped if the consumer stops early."""
        try:
            yield first
            if first.final:
                return
            async for event in stream:
                yield event
        finally:
            stream.cancel()

    async def generate(self, prompt: list[int], params: SamplingParams) -> Generation:
        stream, first = await self.start(prompt, params)
        parts: list[str] = []
        last = first
        async with contextlib.aclosing(self.events(stream, first)) as events:
            async for event in events:
                parts.append(event.text)
                last = event
        if last.error is not None:
            raise ServeError(500, last.error, kind="server_error")
        return Generation(
            "".join(parts), last.finish_reason or "", last.prompt_tokens, last.completion_tokens
        )
