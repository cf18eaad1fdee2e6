"""The server's engine pieces in process, on the tiny model: what HTTP tests cannot pin down.

Whether a request really joins a batch mid-decode depends, over HTTP, on timing; here
the joins and leaves are forced, and every row must still say exactly what
transformers' `generate` says for its prompt alone. The text stream is fed token by
token the way the engine feeds it, to show that nothing a client must not see (a
stop string, a blocked phrase, half a UTF-8 character) ever leaves it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelsmith_runtime.serve import batch
from modelsmith_runtime.serve.engine import Engine
from modelsmith_runtime.serve.metrics import ServeMetrics
from modelsmith_runtime.serve.sampling import SamplingParams
from modelsmith_runtime.serve.service import FALLBACK_CHAT_TEMPLATE, Service
from modelsmith_runtime.serve.text import Blocklist, TextStream
from tests.workloads.tiny_model import tiny_model

NEW = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: str) -> Any:
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def alone(model: Any, prompt: list[int], new: int = NEW) -> list[int]:
    """Greedy continuation by transformers' generate, up to EOS or ``new`` tokens."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False)
    return [int(t) for t in out[0, len(prompt) :]]


def test_rows_join_and_leave_a_running_batch(model: Any, tokenizer: Any) -> None:
    texts = ["The old man", "A dog", "What does the cat do?", "Grandma", "My friend"]
    prompts = [tokenizer(t).input_ids for t in texts]
    expected = [alone(model, p) for p in prompts]  # stops at EOS, as rows do
    eos = tokenizer.eos_token_id
    device = torch.device("cpu")
    out: dict[int, list[int]] = {}
    with torch.inference_mode():
        running, logits = batch.prefill(model, prompts[:2], device)
        assert batch.mergeable(running.cache)
        rows = [0, 1]
        for i, row in enumerate(rows):
            out[row] = [int(logits[i].argmax())]
        for step in range(3 * NEW):
            if step in (3, 5):  # two rows join at step 3, one more at step 5
                joining = [2, 3] if step == 3 else [4]
                fresh, logits = batch.prefill(model, [prompts[r] for r in joining], device)
                for i, row in enumerate(joining):
                    out[row] = [int(logits[i].argmax())]
                running = batch.merge(running, fresh)
                rows += joining
            keep = [i for i, row in enumerate(rows) if len(out[row]) < NEW and out[row][-1] != eos]
            if len(keep) < len(rows):
                running = batch.select(running, keep)  # finished rows leave
                rows = [rows[i] for i in keep]
            if not rows:
                break
            logits = batch.decode(model, running, [out[row][-1] for row in rows])
            for i, row in enumerate(rows):
                out[row].append(int(logits[i].argmax()))
            assert running.columns <= max(len(p) for p in prompts) + NEW
    assert [out[i] for i in range(len(prompts))] == expected


def feed(tokenizer: Any, text: str, stream: TextStream) -> tuple[list[str], str | None]:
    chunks, reason = [], None
    for token in tokenizer(text, add_special_tokens=False).input_ids:
        chunk, reason = stream.push(token)
        chunks.append(chunk)
        if reason:
            return chunks, reason
    chunk, reason = stream.finish()
    return [*chunks, chunk], reason


def test_stop_string_is_never_shown(tokenizer: Any) -> None:
    chunks, reason = feed(
        tokenizer, "The old man carries the red ball", TextStream(tokenizer, ["red b"], None)
    )
    assert reason == "stop"
    assert "".join(chunks) == "The old man carries the "
    assert not any("red" in c for c in chunks)


def test_blocked_phrase_ignores_case_and_is_never_shown(tokenizer: Any) -> None:
    blocklist = Blocklist.of(["RED BALL", "zebra"])
    assert blocklist is not None and blocklist.longest == 8
    stream = TextStream(tokenizer, [], blocklist)
    chunks, reason = feed(tokenizer, "The old man carries the red ball home", stream)
    assert reason == "content_filter"
    assert "".join(chunks) == "The old man carries the "
    assert not any("red" in c for c in chunks)
    clean, reason = feed(
        tokenizer, "The old man carries the ball", TextStream(tokenizer, [], blocklist)
    )
    assert reason is None and "".join(clean) == "The old man carries the ball"


def test_half_characters_are_held_back(tokenizer: Any) -> None:
    chunks, _ = feed(tokenizer, "naïve café 日本", TextStream(tokenizer, [], None))
    assert "".join(chunks) == "naïve café 日本"
    assert not any("\ufffd" in c for c in chunks)


def test_chat_falls_back_to_a_plain_template(model_dir: str) -> None:
    bare = AutoTokenizer.from_pretrained(model_dir)
    bare.chat_template = None
    service = Service(SimpleNamespace(), SimpleNamespace(tokenizer=bare), SimpleNamespace())  # type: ignore[arg-type]
    ids = service.chat_prompt([{"role": "user", "content": "hi"}])
    assert bare.decode(ids) == "user: hi\nassistant:"
    assert "assistant:" in FALLBACK_CHAT_TEMPLATE


def test_engine_admits_new_requests_at_step_boundaries(
    model_dir: str, model: Any, tokenizer: Any
) -> None:
    """A short request sent while a long one decodes finishes first: it joined the
    running batch instead of waiting for it to drain."""
    engine = Engine(
        Path(model_dir),
        ServeMetrics("units", "units"),
        max_batch_size=4,
        max_wait_ms=0,
        blocklist=None,
        on_fatal=lambda error: None,
    )
    engine.start()
    assert engine.loaded.wait(120), engine.load_error

    async def scenario() -> tuple[list[str], list[str]]:
        order: list[str] = []
        long = engine.submit(
            tokenizer("The old man").input_ids, SamplingParams(60, 0.0, ignore_eos=True)
        )
        first = await long.next()
        short = engine.submit(tokenizer("A dog").input_ids, SamplingParams(3, 0.0))

        async def drain(name: str, stream: Any, seen: list[str]) -> None:
            async for event in stream:
                seen.append(event.text)
                if event.final:
                    order.append(name)

        long_text, short_text = [first.text], []
        await asyncio.gather(drain("long", long, long_text), drain("short", short, short_text))
        return order, short_text

    order, short_text = asyncio.run(scenario())
    engine.stop(10)
    assert order == ["short", "long"]
    expected = alone(model, tokenizer("A dog").input_ids, 3)
    assert "".join(short_text) == tokenizer.decode(expected, skip_special_tokens=True)
