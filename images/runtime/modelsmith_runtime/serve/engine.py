"""The built-in engine: one thread owns the model and decodes all requests together.

Iteration-level (continuous) batching: the thread loops over steps. At each step
boundary, requests that are waiting join the running batch (up to
batching.maxBatchSize rows; their prompts are prefilled together and their KV cache is
joined to the batch's, see `batch`), then one forward advances every running row by a
token, and rows that finished leave. So a request never waits for a batch to drain,
and a long request does not hold short ones back. When nothing runs, the first
arrival waits up to batching.maxWaitMs for company before its prefill starts: that
trades a few milliseconds of first-token latency for a fuller first step.

The model lives on this one thread (torch's forward is not re-entrant and the GPU runs
one stream anyway); the event loop only tokenizes, submits and relays. Results cross
back as `Event`s (a request's first token, then each token that changes what its
client may see), handed over once per step in one `loop.call_soon_threadsafe`.

Caches that cannot be joined row by row (sliding-window or linear-attention layers,
see `batch.mergeable`) fall back to batch groups: waiting requests start together
when the running group has finished.

A row whose logits are not finite (a broken model version: NaN weights, an overflow)
fails its own request with `NON_FINITE`, which the API answers with HTTP 500, and the
others go on. A failure of a whole step (out of memory, a kernel error) fails the
requests in that step, not the server.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelsmith_runtime.serve.metrics import ServeMetrics
from modelsmith_runtime.serve.sampling import SamplingParams
from modelsmith_runtime.serve.text import Blocklist, TextStream

log = logging.getLogger(__name__)

NON_FINITE = "model produced non-finite logits"
LENGTH, STOP, ABORT = "length", "stop", "abort"
IDLE_POLL_S = 0.1


@dataclass(frozen=True)
class Event:
    """What changed for one request: new text, and at the end a reason or an error."""

    text: str = ""
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False


def _put_all(items: list[tuple[asyncio.Queue[Event], Event]]) -> None:
    for events, event in items:
        events.put_nowait(event)


class Stream:
    """The event loop's handle on a submitted request."""

    def __init__(self, request: Request, events: asyncio.Queue[Event]) -> None:
        self.request = request
        self._events = events

    async def next(self) -> Event:
        return await self._events.get()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.next()
            yield event
            if event.final:
                return

    def cancel(self) -> None:
        """The client went away: the engine drops the row at its next step."""
        self.request.cancelled = True


@dataclass
class _Seq:
    request: Request
    text: TextStream
    generator: Any
    pending: int = 0
    generated: int = 0
    last_token_at: float = 0.0
    done: bool = False


class Engine:
    def __init__(
        self,
        model_dir: Path,
        metrics: ServeMetrics,
        *,
        max_batch_size: int,
        max_wait_ms: int,
        blocklist: Blocklist | None,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.model_dir = model_dir
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.blocklist = blocklist
        self.on_fatal = on_fatal
        self.loaded = threading.Event()
        self.load_error: BaseException | None = None
        self.tokenizer: Any = None
        self._detokenizer: Any = None
        self.context_length = 0
        self.served = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0}
        self._model: Any = None
        self._device: Any = None
        self._eos: frozenset[int] = frozenset()
        self._queue: queue.Queue[Request] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)
        self._running: list[_Seq] = []
        self._outbox: list[tuple[Request, Event]] = []
        self._batch: Any = None
        self._mergeable: bool | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Finish what was submitted, then end the thread (waiting at most ``timeout``)."""
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("engine still busy after %.0fs; leaving it to the process exit", timeout)

    def submit(self, prompt: list[int], params: SamplingParams) -> Stream:
        """Queue a request; called on the event loop, which receives its events."""
        events: asyncio.Queue[Event] = asyncio.Queue()
        request = Request(prompt, params, asyncio.get_running_loop(), events)
        self._queue.put(request)
        self.metrics.waiting.set(self._queue.qsize())
        return Stream(request, events)

    def _deliver(self, request: Request, event: Event) -> None:
        self._outbox.append((request, event))

    def _flush(self) -> None:
        """Hand a step's events over in one callback per event loop: one wake-up of the
        loop per step rather than one per token (each is a write to its self-pipe)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Event], Event]]] = {}
        for request, event in self._outbox:
            by_loop.setdefault(request.loop, []).append((request.events, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening any more
                log.debug("dropped %d events for a closed event loop", len(items))

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            log.error("loading the model failed: %s", exc)
            self.load_error = exc
            self.on_fatal(exc)
            return
        self.loaded.set()
        import torch

        with torch.inference_mode():
            while True:
                group = self._admit()
                if group is None:
                    return
                try:
                    self._step(group)
                except Exception as exc:
                    log.exception("engine step failed")
                    self._fail_all(group, f"engine error: {type(exc).__name__}: {exc}")
                self._flush()

    def _load(self) -> None:
        from modelsmith_runtime import hfmodel

        hfmodel.quiet_transformers()
        self._device = hfmodel.pick_device()
        started = time.monotonic()
        self.tokenizer = hfmodel.load_tokenizer(self.model_dir)
        # A tokenizer of its own for decoding: the event loop encodes with the other one,
        # and a Rust tokenizer shared across threads can fail with "Already borrowed".
        self._detokenizer = hfmodel.load_tokenizer(self.model_dir)
        self._model = hfmodel.load_model(self.model_dir, self._device)
        config = self._model.config
        eos = getattr(self._model.generation_config, "eos_token_id", None)
        eos_ids = eos if isinstance(eos, list) else [eos]
        self._eos = frozenset(i for i in [*eos_ids, self.tokenizer.eos_token_id] if i is not None)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 20)
        log.info(
            "loaded %s (%s, context %d) on %s in %.1fs",
            self.model_dir,
            type(self._model).__name__,
            self.context_length,
            self._device,
            time.monotonic() - started,
        )

    def _take(self, block: bool, timeout: float = 0.0) -> Request | None:
        try:
            return self._queue.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            return None

    def _admit(self) -> list[Request] | None:
        """The requests that join at this step boundary; None once stopped and idle."""
        group: list[Request] = []
        if not self._running:
            while (first := self._take(True, IDLE_POLL_S)) is None:
                if self._stopping.is_set() and self._queue.empty():
                    return None
            group.append(first)
            deadline = time.monotonic() + self.max_wait_s
            while len(group) < self.max_batch_size:
                left = deadline - time.monotonic()
                more = self._take(True, left) if left > 0 else self._take(False)
                if more is None:
                    break
                group.append(more)
        elif self._mergeable:
            while len(self._running) + len(group) < self.max_batch_size:
                more = self._take(False)
                if more is None:
                    break
                group.append(more)
        self.metrics.waiting.set(self._queue.qsize())
        live = []
        for request in group:
            if request.cancelled:
                self.metrics.finished(ABORT)
            else:
                live.append(request)
        return live

    def _step(self, group: list[Request]) -> None:
        from modelsmith_runtime.serve import batch

        tokens = 0
        if group:
            seqs = [self._seq(r) for r in group]
            fresh, logits = batch.prefill(self._model, [r.prompt for r in group], self._device)
            prompt_tokens = sum(len(r.prompt) for r in group)
            self.metrics.prompt_tokens.inc(prompt_tokens)
            self.served["prompt_tokens"] += prompt_tokens
            tokens += prompt_tokens
            if self._mergeable is None:
                self._mergeable = batch.mergeable(fresh.cache)
            self._advance(seqs, logits)
            self._batch = fresh if self._batch is None else batch.merge(self._batch, fresh)
            self._running += seqs
            self._reap()
        if self._running:
            self.metrics.batch_size.observe(len(self._running))
            tokens += len(self._running)
            logits = batch.decode(self._model, self._batch, [s.pending for s in self._running])
            self._advance(self._running, logits)
            self._reap()
        self.metrics.iteration_tokens.observe(tokens)
        self.metrics.running.set(len(self._running))

    def _seq(self, request: Request) -> _Seq:
        from modelsmith_runtime.serve.sampling import generator

        self.served["requests"] += 1
        stream = TextStream(self._detokenizer, request.params.stop, self.blocklist)
        return _Seq(request, stream, generator(request.params, self._device))

    def _advance(self, seqs: list[_Seq], logits: Any) -> None:
        """Sample each live row's next token and tell its client what it may now see."""
        import torch

        from modelsmith_runtime.serve.sampling import sample

        finite: list[bool] = torch.isfinite(logits).all(dim=-1).tolist()
        safe = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
        tokens = sample(safe, [s.request.params for s in seqs], [s.generator for s in seqs])
        now = time.monotonic()
        produced = 0
        for seq, token, ok in zip(seqs, tokens, finite, strict=True):
            if seq.done:
                continue
            if not ok:
                self._fail(seq, NON_FINITE, "non_finite_logits")
                continue
            self._token(seq, token, now)
            produced += 1
        self.metrics.generation_tokens.inc(produced)
        self.served["generated_tokens"] += produced

    def _token(self, seq: _Seq, token: int, now: float) -> None:
        request = seq.request
        if seq.generated == 0:
            self.metrics.ttft.observe(now - request.arrival)
        else:
            self.metrics.tpot.observe(now - seq.last_token_at)
        seq.pending, seq.last_token_at = token, now
        seq.generated += 1
        reason: str | None
        if token in self._eos and not request.params.ignore_eos:
            text, reason = seq.text.finish()
            reason = reason or STOP
        else:
            text, reason = seq.text.push(token)
            if reason is None and request.cancelled:
                reason = ABORT
            elif reason is None and (
                seq.generated >= request.params.max_tokens
                or len(request.prompt) + seq.generated >= self.context_length
            ):
                more, reason = seq.text.finish()
                text, reason = text + more, reason or LENGTH
        if reason is not None:
            seq.done = True
            self.metrics.e2e.observe(now - request.arrival)
            self.metrics.finished(reason)
        # The first token starts the answer even when it shows nothing yet (half a
        # character): what a client measures as time to first token is the engine's.
        if text or reason is not None or seq.generated == 1:
            self._deliver(request, Event(text, reason, None, len(request.prompt), seq.generated))

    def _fail(self, seq: _Seq, message: str, reason: str = "engine_error") -> None:
        seq.done = True
        self.metrics.failed(reason)
        self._deliver(seq.request, Event(error=message, prompt_tokens=len(seq.request.prompt)))

    def _fail_all(self, group: list[Request], message: str) -> None:
        """After a failed step: every request in it gets the error once, the batch resets."""
        seen = {id(s.request) for s in self._running}
        for seq in self._running:
            if not seq.done:
                self._fail(seq, message)
        for request in group:
            if id(request) not in seen:
                self.metrics.failed("engine_error")
                self._deliver(request, Event(error=message, prompt_tokens=len(request.prompt)))
        self._running, self._batch = [], None
        self.metrics.running.set(0)

    def _reap(self) -> None:
        """Drop finished rows (all at once when the cache cannot lose single rows)."""
        from modelsmith_runtime.serve import batch

        keep = [i for i, s in enumerate(self._running) if not s.done]
        if len(keep) == len(self._running):
            return
        if not keep:
            self._running, self._batch = [], None
        elif self._mergeable:
            self._batch = batch.select(self._batch, keep)
            self._running = [self._running[i] for i in keep]
