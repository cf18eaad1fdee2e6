"""The server's API keys, request limits and output filter, against a real process.

One server for the module, with every limit set low and a key file; each test uses a
key of its own, so the per-key rate limit of one test never counts another's requests.
The blocked phrase is what the tiny model really says (found with transformers'
generate before the server starts), written in capitals to show the match ignores case.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.workloads.serving import ServerProcess, serve_model, sse_events
from tests.workloads.test_serve import reference
from tests.workloads.tiny_model import tiny_model

NAME = "guarded"
KEYS = ["key-auth", "key-limits", "key-body", "key-rpm", "key-rpm-other", "key-busy", "key-filter"]
RPM = 5
PROMPT = "The old man"
LIMITS = {
    "maxTokens": 8,
    "maxPromptTokens": 32,
    "maxBodyBytes": 2048,
    "maxConcurrentRequests": 2,
    "requestsPerMinute": RPM,
}


@pytest.fixture(scope="module")
def said(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the model says to PROMPT, greedy: " carries the red ball before dinner."."""
    return reference(tiny_model(tmp_path_factory), PROMPT, 8)


@pytest.fixture(scope="module")
def phrase(said: str) -> str:
    words = said.split()
    assert len(words) >= 4, said
    return " ".join(words[2:4])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, phrase: str) -> Iterator[ServerProcess]:
    spec = {
        "limits": LIMITS,
        "outputFilter": {"blocklist": ["never said", phrase.upper()]},
        "apiKeySecret": {"name": "keys"},
    }
    model = tiny_model(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("guard")
    with serve_model(model, spec, workdir=workdir, name=NAME, api_keys=KEYS) as running:
        yield running


def post(server: ServerProcess, key: str | None, body: dict[str, Any], **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, **body}
    return httpx.post(
        f"{server.url}/v1/completions", json=payload, headers=headers, timeout=60, **kw
    )


def error(answer: httpx.Response) -> str:
    message: str = answer.json()["error"]["message"]
    return message


def test_api_keys(server: ServerProcess) -> None:
    missing = post(server, None, {})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    basic = httpx.post(
        f"{server.url}/v1/completions",
        json={"prompt": "x"},
        headers={"Authorization": "Basic a2V5"},
    )
    assert basic.status_code == 401
    wrong = post(server, "key-nope", {})
    assert wrong.status_code == 403 and error(wrong) == "the API key is not valid"
    assert post(server, "key-auth", {}).status_code == 200
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=chat).status_code == 401
    predict = {"instances": [PROMPT], "parameters": {"max_tokens": 2}}
    url = f"{server.url}/v1/models/{NAME}:predict"
    assert httpx.post(url, json=predict).status_code == 401
    ok = httpx.post(url, json=predict, headers={"Authorization": "Bearer key-auth"}, timeout=60)
    assert ok.status_code == 200
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    for open_path in ("/v2/health/live", "/v2/health/ready", f"/v1/models/{NAME}", "/metrics"):
        assert httpx.get(server.url + open_path).status_code == 200, open_path


def test_max_tokens_and_prompt_length(server: ServerProcess) -> None:
    too_many = post(server, "key-limits", {"max_tokens": 9})
    assert too_many.status_code == 400
    assert "max_tokens=9" in error(too_many) and "limits.maxTokens=8" in error(too_many)
    assert too_many.json()["error"]["param"] == "max_tokens"
    long_prompt = post(server, "key-limits", {"prompt": "the cat " * 20})
    assert long_prompt.status_code == 400
    assert "limits.maxPromptTokens=32" in error(long_prompt)
    counted = re.search(r"the prompt has (\d+) tokens", error(long_prompt))
    assert counted is not None and int(counted.group(1)) > 32
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    chat_answer = httpx.post(
        f"{server.url}/v1/chat/completions",
        json=chat,
        headers={"Authorization": "Bearer key-limits"},
    )
    assert chat_answer.status_code == 400 and "limits.maxTokens=8" in error(chat_answer)


def test_body_size(server: ServerProcess) -> None:
    big = post(server, "key-body", {"prompt": "x" * 3000})
    assert big.status_code == 413
    assert "limits.maxBodyBytes=2048" in error(big)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"y" * 100
        yield b'"}'

    chunked = httpx.post(
        f"{server.url}/v1/completions",
        content=chunks(),
        headers={"Authorization": "Bearer key-body", "Content-Type": "application/json"},
    )
    assert chunked.status_code == 413 and "limits.maxBodyBytes=2048" in error(chunked)


def test_requests_per_minute_per_key(server: ServerProcess) -> None:
    for _ in range(RPM):
        assert post(server, "key-rpm", {"max_tokens": 1}).status_code == 200
    limited = post(server, "key-rpm", {"max_tokens": 1})
    assert limited.status_code == 429
    assert f"limits.requestsPerMinute={RPM}" in error(limited)
    assert 0 < int(limited.headers["retry-after"]) <= 60
    assert post(server, "key-rpm-other", {"max_tokens": 1}).status_code == 200


def _slow_upload(server: ServerProcess, body: bytes) -> socket.socket:
    """A request whose body stops half-way: it holds its slot until the rest comes."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer key-busy\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:10])
    return sock


def _in_flight(server: ServerProcess) -> float:
    return server.metrics().get(f"modelsmith:requests_in_flight{{model_name={NAME}}}", 0.0)


def test_max_concurrent_requests(server: ServerProcess) -> None:
    body = b'{"prompt": "The old man", "max_tokens": 3, "temperature": 0}'
    holders = [_slow_upload(server, body) for _ in range(2)]
    deadline = time.monotonic() + 30
    while _in_flight(server) < 2:
        assert time.monotonic() < deadline, "the two uploads never took their slots"
        time.sleep(0.05)
    busy = post(server, "key-busy", {})
    assert busy.status_code == 429
    assert "limits.maxConcurrentRequests=2" in error(busy)
    for sock in holders:
        sock.sendall(body[10:])
    for sock in holders:
        with sock:
            status = sock.makefile("rb").readline()
        assert status.startswith(b"HTTP/1.1 200"), status
    assert post(server, "key-busy", {}).status_code == 200  # the slots are free again
    counted = server.metrics()
    assert (
        counted[
            f"http_requests_total{{handler=/v1/completions,method=POST,model_name={NAME},status=429}}"
        ]
        >= 1
    )


def test_blocklist_stops_before_the_phrase(server: ServerProcess, said: str, phrase: str) -> None:
    filtered = f"vllm:request_success_total{{finished_reason=content_filter,model_name={NAME}}}"
    count = server.metrics().get(filtered, 0.0)
    before = said[: said.index(phrase)]
    answer = post(server, "key-filter", {"max_tokens": 8})
    choice = answer.json()["choices"][0]
    assert choice == {**choice, "text": before, "finish_reason": "content_filter"}

    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
    headers = {"Authorization": "Bearer key-filter"}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers=headers, timeout=60
    ) as streamed:
        events = sse_events(streamed)
    chunks = [e["choices"][0] for e in events if isinstance(e, dict)]
    texts = [c["text"] for c in chunks]
    assert "".join(texts) == before
    first_word = phrase.split(maxsplit=1)[0]
    assert not any(first_word in t for t in texts)  # not even the phrase's start leaked
    assert chunks[-1]["finish_reason"] == "content_filter"
    assert server.metrics()[filtered] == count + 2
