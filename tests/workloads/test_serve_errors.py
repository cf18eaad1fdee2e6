"""The server with models that are not the plain tiny one, and the ways a server ends.

- A model version whose weights are NaN (how a broken release looks to the server):
  it loads and turns ready, and every request gets HTTP 500 "model produced
  non-finite logits", streamed or not, while the server stays up.
- A QuantizeJob's output (int8 weight-only, torchao tensors in safetensors, saved the
  way the quantize component saves it) is served like any model.
- SIGTERM during a stream: the stream finishes, the process exits 0, its Result counts
  what was served (the int8 server's end, so that test comes after the int8 one).
- Bad input: an artifact without its completion marker exits 2 before serving; a
  published artifact that transformers cannot load exits 2 after the port opened
  (the engine thread fails, the server stops itself).

The processes start together, so their imports overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

from modelsmith.contract import COMPLETION_MARKER, ExitCode
from modelsmith_runtime import storage
from tests.workloads.conftest import run_component
from tests.workloads.serving import ServerProcess, serve_config, start_server
from tests.workloads.tiny_model import tiny_model

BODY = {"prompt": "The old man", "max_tokens": 8, "temperature": 0}


def publish_nan_model(base: str, uri: str) -> str:
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(math.nan)
    with storage.publish(uri, {"kind": "PretrainJob"}) as (staging, _):
        model.save_pretrained(str(staging))
        AutoTokenizer.from_pretrained(base).save_pretrained(str(staging))
    return uri


def publish_int8_model(base: str, uri: str) -> str:
    """What `modelsmith-runtime quantize` publishes for int8-weight-only, without its gate."""
    from torchao.quantization import Int8WeightOnlyConfig

    config = TorchAoConfig(Int8WeightOnlyConfig())
    model = AutoModelForCausalLM.from_pretrained(base, quantization_config=config)
    with storage.publish(uri, {"kind": "QuantizeJob"}) as (staging, _):
        model.save_pretrained(str(staging))
        AutoTokenizer.from_pretrained(base).save_pretrained(str(staging))
    return uri


@dataclass(frozen=True)
class Servers:
    nan: ServerProcess
    int8: ServerProcess
    int8_uri: str
    unloadable: ServerProcess
    """A published directory whose config.json is not a model's: it never gets ready."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("serve-errors")
    nan = publish_nan_model(base, str(root / "nan-model"))
    int8 = publish_int8_model(base, str(root / "int8-model"))
    with storage.publish(str(root / "not-a-model"), {"kind": "PretrainJob"}) as (staging, _):
        AutoTokenizer.from_pretrained(base).save_pretrained(str(staging))
        (staging / "config.json").write_text('{"model_type": "no-such-architecture"}')
    unloadable = start_server(str(root / "not-a-model"), workdir=root / "unloadable")
    started = [
        start_server(nan, workdir=root / "nan", name="broken"),
        start_server(int8, workdir=root / "int8", name="int8"),
    ]
    try:
        ready = [s.wait_ready() for s in started]
        yield Servers(*ready, int8_uri=int8, unloadable=unloadable)
    finally:
        for server in [*started, unloadable]:
            server.stop()


def test_non_finite_logits_fail_the_request(servers: Servers) -> None:
    server = servers.nan
    answer = httpx.post(f"{server.url}/v1/completions", json=BODY, timeout=60)
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "message": "model produced non-finite logits",
        "type": "server_error",
        "param": None,
        "code": 500,
    }
    streamed = httpx.post(f"{server.url}/v1/completions", json={**BODY, "stream": True}, timeout=60)
    assert streamed.status_code == 500  # failed before its first token: no 200 stream
    assert streamed.json()["error"]["message"] == "model produced non-finite logits"
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=60).status_code == 500
    predict = httpx.post(
        f"{server.url}/v1/models/broken:predict", json={"instances": ["hi"]}, timeout=60
    )
    assert predict.status_code == 500 and "non-finite" in predict.text
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # still up
    metrics = server.metrics()
    labels = "handler=/v1/completions,method=POST,model_name=broken,status=500"
    assert metrics[f"http_requests_total{{{labels}}}"] == 2
    errors = "modelsmith:request_errors_total{model_name=broken,reason=non_finite_logits}"
    assert metrics[errors] == 4


def test_a_quantized_model_is_served(servers: Servers) -> None:
    answer = httpx.post(f"{servers.int8.url}/v1/completions", json=BODY, timeout=60)
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["text"].strip()  # int8 rounding may change a token, not the fluency
    assert choice["finish_reason"] in ("stop", "length")
    assert "torchao" in (Path(servers.int8_uri) / "config.json").read_text()


def test_sigterm_finishes_in_flight_streams(servers: Servers) -> None:
    server = servers.int8
    body = {
        "prompt": "The old man",
        "max_tokens": 100,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as answer:
        lines = answer.iter_lines()
        assert next(lines).startswith("data: ")
        server.process.terminate()  # SIGTERM with the stream half-way
        rest = [line for line in lines if line]
    code = server.stop()
    assert code == 0, server.log()[-3000:]
    assert rest[-1] == "data: [DONE]"  # the request in flight was finished, not cut
    assert '"completion_tokens": 100' in rest[-2]
    assert '"finish_reason": "length"' in rest[-3]
    result = server.result()
    assert result is not None and result.error is None, server.log()[-3000:]
    assert result.metrics["generated_tokens"] >= 100
    assert result.uri == servers.int8_uri


def test_an_unpublished_model_is_bad_input(tmp_path: Path) -> None:
    half = tmp_path / "half-written"
    half.mkdir()
    (half / "config.json").write_text("{}")
    run = run_component("serve", serve_config(str(half)), tmp_path / "run", timeout=120)
    assert run.returncode == ExitCode.BAD_INPUT, run.output[-2000:]
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "IncompleteArtifact"
    assert COMPLETION_MARKER in run.result.error.message


def test_a_model_that_does_not_load_stops_the_server(servers: Servers) -> None:
    server = servers.unloadable
    code = server.process.wait(120)
    assert code == ExitCode.BAD_INPUT, server.log()[-3000:]
    assert "Uvicorn running" in server.log()  # it failed on the engine thread, while serving
    result = server.result()
    assert result is not None and result.error is not None
    assert result.error.reason == "InvalidModel"
    assert "no-such-architecture" in result.error.message
