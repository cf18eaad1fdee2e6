"""`modelsmith-runtime serve` as a real process: the OpenAI and KServe APIs, batching, metrics.

One server on the tiny model for the whole module (it starts in seconds, then each
test sends real HTTP to 127.0.0.1). Greedy outputs are checked against transformers'
own `generate` on the same weights, so "the server works" means it says what the
model says, batched or not.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.workloads.serving import ServerProcess, serve_model, sse_events
from tests.workloads.tiny_model import tiny_model

NAME = "tiny"
SPEC = {"batching": {"maxBatchSize": 8, "maxWaitMs": 50}, "limits": {"maxTokens": 64}}
PROMPTS = [
    "The old man",
    "A dog",
    "The teacher reads",
    "What does the cat do?",
    "Grandma",
    "My friend",
    "The boy near the river",
    "A bird",
]
M = f"model_name={NAME}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve_model(model_dir, SPEC, workdir=tmp_path_factory.mktemp("serve"), name=NAME) as s:
        yield s


def reference(model_dir: str, prompt: str, max_tokens: int) -> str:
    """Greedy text from transformers' generate, the way a user would call it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def complete(server: ServerProcess, prompt: str | list[str], **body: Any) -> dict[str, Any]:
    payload = {"model": NAME, "prompt": prompt, "max_tokens": 24, "temperature": 0, **body}
    answer = httpx.post(f"{server.url}/v1/completions", json=payload, timeout=60)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_ready_only_once_the_model_is_loaded(server: ServerProcess) -> None:
    assert server.saw_loading, server.readiness  # live, not ready, while loading
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v1/models/{NAME}").json() == {"name": NAME, "ready": True}
    assert httpx.get(f"{server.url}/v2/models/{NAME}/ready").json()["ready"] is True
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_models_lists_the_served_model(server: ServerProcess) -> None:
    for path in ("/v1/models", "/openai/v1/models"):
        listed = httpx.get(server.url + path).json()
        assert listed["object"] == "list"
        assert [m["id"] for m in listed["data"]] == [NAME]
        assert listed["data"][0]["max_model_len"] == 128
        assert listed["models"] == [NAME]  # KServe's v1 list, on the same path


def test_completion_is_what_transformers_generates(server: ServerProcess, model_dir: str) -> None:
    answer = complete(server, "The old man", max_tokens=30)
    expected = reference(model_dir, "The old man", 30)
    choice = answer["choices"][0]
    assert choice["text"] == expected
    assert choice["finish_reason"] == "stop"  # the tiny model ends its sentence
    assert answer["object"] == "text_completion"
    assert answer["model"] == NAME
    assert answer["usage"]["prompt_tokens"] == 3
    assert answer["usage"]["total_tokens"] == 3 + answer["usage"]["completion_tokens"]

    short = complete(server, "The old man", max_tokens=3)["choices"][0]
    assert short["finish_reason"] == "length"
    assert expected.startswith(short["text"])

    long = complete(server, "The old man", max_tokens=40, ignore_eos=True)
    assert long["usage"]["completion_tokens"] == 40
    assert long["choices"][0]["text"].startswith(expected)


def test_completion_stream_is_the_same_text(server: ServerProcess) -> None:
    plain = complete(server, "A dog")
    body = {"model": NAME, "prompt": "A dog", "max_tokens": 24, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = sse_events(answer)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict) and e["choices"]]
    assert len(chunks) > 2  # token by token, not one block
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["object"] == "text_completion" for c in chunks)
    usage = events[-2]
    assert isinstance(usage, dict) and usage["usage"] == plain["usage"]


def test_chat_uses_the_chat_template(server: ServerProcess, model_dir: str) -> None:
    messages = [{"role": "user", "content": "What does the cat do?"}]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tokenizer(templated, add_special_tokens=False).input_ids)
    body = {"model": NAME, "messages": messages, "max_tokens": 20, "temperature": 0}
    answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    assert answer["object"] == "chat.completion"
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    assert answer["usage"]["prompt_tokens"] == prompt_tokens

    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as streamed:
        events = sse_events(streamed)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]


def test_stop_strings_cut_the_text(server: ServerProcess) -> None:
    full = complete(server, "The old man")["choices"][0]["text"]  # " carries the red ball…"
    word = full.split()[2]
    cut = complete(server, "The old man", stop=["zzz", word])["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[: full.index(word)]


def test_openai_prefix_and_sampling(server: ServerProcess) -> None:
    body = {"prompt": "The old man", "max_tokens": 12, "temperature": 0.9, "seed": 7}
    first = httpx.post(f"{server.url}/openai/v1/completions", json=body, timeout=60).json()
    again = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    assert first["choices"][0]["text"] == again["choices"][0]["text"]  # same seed, same text


def test_several_prompts_in_one_request(server: ServerProcess) -> None:
    singles = [complete(server, p)["choices"][0]["text"] for p in PROMPTS[:3]]
    answer = complete(server, PROMPTS[:3])
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert [c["text"] for c in answer["choices"]] == singles
    body = {"prompt": PROMPTS[:3], "max_tokens": 24, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as streamed:
        events = sse_events(streamed)
    texts = ["", "", ""]
    for event in events[:-1]:
        assert isinstance(event, dict)
        for choice in event["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == singles
    assert httpx.post(f"{server.url}/v1/completions", json={"prompt": []}).status_code == 400


def test_kserve_v1_predict_and_v2_infer(server: ServerProcess) -> None:
    greedy = complete(server, "The old man", max_tokens=6)["choices"][0]["text"]
    body = {
        "instances": ["The old man", {"prompt": "The old man", "max_tokens": 2}],
        "parameters": {"max_tokens": 6, "temperature": 0},
    }
    predicted = httpx.post(f"{server.url}/v1/models/{NAME}:predict", json=body, timeout=60)
    assert predicted.status_code == 200, predicted.text
    first, second = predicted.json()["predictions"]
    assert first["text"] == greedy and first["completion_tokens"] == 6
    assert greedy.startswith(second["text"]) and second["finish_reason"] == "length"

    infer = {
        "inputs": [
            {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["The old man"]}
        ],
        "parameters": {"max_tokens": 6, "temperature": 0},
    }
    inferred = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=infer, timeout=60)
    assert inferred.status_code == 200, inferred.text
    outputs = {o["name"]: o["data"] for o in inferred.json()["outputs"]}
    assert outputs == {"text_output": [greedy], "finish_reason": ["length"]}


def test_bad_requests_get_openai_errors(server: ServerProcess) -> None:
    url = f"{server.url}/v1/completions"
    wrong = httpx.post(url, json={"model": "other", "prompt": "x"})
    assert wrong.status_code == 404
    assert "`other` does not exist" in wrong.json()["error"]["message"]
    not_json = httpx.post(url, content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]["message"]
    no_prompt = httpx.post(url, json={"model": NAME})
    assert no_prompt.status_code == 400 and "prompt" in no_prompt.json()["error"]["message"]
    many = httpx.post(url, json={"prompt": "x", "n": 2})
    assert many.status_code == 400 and many.json()["error"]["param"] == "n"
    repository = httpx.post(f"{server.url}/v2/repository/models/{NAME}/unload")
    assert repository.status_code == 404  # nobody unloads the only model


def test_concurrent_requests_are_batched(server: ServerProcess) -> None:
    alone = [complete(server, p)["choices"][0]["text"] for p in PROMPTS]
    before = server.metrics()
    barrier = threading.Barrier(len(PROMPTS))

    def together(prompt: str) -> str:
        barrier.wait()
        return str(complete(server, prompt)["choices"][0]["text"])

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        batched = list(pool.map(together, PROMPTS))
    after = server.metrics()
    assert batched == alone  # batching changes nothing a client can see

    def delta(key: str) -> float:
        return after[key] - before.get(key, 0.0)

    steps = delta(f"modelsmith:batch_size_count{{{M}}}")
    single = delta(f"modelsmith:batch_size_bucket{{le=1.0,{M}}}")
    assert steps > 0 and single < steps  # some steps decoded several requests at once
    rows = delta(f"modelsmith:batch_size_sum{{{M}}}")
    assert rows / steps > 2
    assert after[f"vllm:num_requests_running{{{M}}}"] == 0
    assert after[f"vllm:num_requests_waiting{{{M}}}"] == 0


def test_metrics_count_what_was_served(server: ServerProcess) -> None:
    before = server.metrics()
    answer = complete(server, "The old man")
    httpx.post(f"{server.url}/v1/completions", json={"model": "other", "prompt": "x"})
    after = server.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    usage = answer["usage"]
    assert delta(f"vllm:prompt_tokens_total{{{M}}}") == usage["prompt_tokens"]
    assert delta(f"vllm:generation_tokens_total{{{M}}}") == usage["completion_tokens"]
    assert delta(f"vllm:request_success_total{{finished_reason=stop,{M}}}") == 1
    for histogram in (
        "vllm:e2e_request_latency_seconds",
        "vllm:time_to_first_token_seconds",
    ):
        assert delta(f"{histogram}_count{{{M}}}") == 1
    assert (
        delta(f"vllm:time_per_output_token_seconds_count{{{M}}}") == usage["completion_tokens"] - 1
    )
    assert delta(f"vllm:iteration_tokens_total_count{{{M}}}") == usage["completion_tokens"] - 1
    ok = f"http_requests_total{{handler=/v1/completions,method=POST,{M},status=200}}"
    missing = f"http_requests_total{{handler=/v1/completions,method=POST,{M},status=404}}"
    assert delta(ok) == 1 and delta(missing) == 1
    info = f"modelsmith:server_info{{{M},revision={NAME}-test,runtime=builtin}}"
    assert after[info] == 1
