"""Output tokens/s of the built-in server against plain transformers `generate`, one run.

The baseline is what serving without batching gives: the same model, on the same
device, answering one request at a time with `model.generate` (greedy, exactly
--max-tokens new tokens). The server is the real `modelsmith-runtime serve` process
(tests/workloads/serving.py starts it), loaded with 1, 8 and 64 concurrent streaming
clients (--concurrency), each sending requests back to back with `ignore_eos`, so
every request yields exactly --max-tokens tokens too. Printed per concurrency: output
tokens/s, its ratio to the baseline, and the clients' median time to first token.

The model is a Llama of the --size shape with random weights (throughput does not
depend on what the weights say) and the tiny byte-level tokenizer of
tests/workloads/tiny_model.py, so its vocabulary is small (a few hundred tokens): the
LM head is cheaper than a real model's, on both sides alike. On a CPU both sides run
on --threads threads (1 by default), and the client process shares the machine.

    .venv/bin/python bench/serve_throughput.py --tiny                  # CPU smoke run
    .venv/bin/python bench/serve_throughput.py --device cuda --size 1b --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv": 4, "intermediate": 192},
    "small": {"hidden": 256, "layers": 4, "heads": 4, "kv": 4, "intermediate": 768},
    "125m": {"hidden": 768, "layers": 12, "heads": 12, "kv": 12, "intermediate": 3072},
    "1b": {"hidden": 2048, "layers": 22, "heads": 32, "kv": 4, "intermediate": 5632},
}
"""125m is GPT-2-small's shape; 1b is TinyLlama-1.1B's (as in train_throughput.py)."""
PROMPT = "The old man carries the red ball before dinner. A dog"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--baseline-requests", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each side")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke settings: --size tiny --max-tokens 32"
    )
    args = parser.parse_args()
    if args.tiny:
        args.size, args.max_tokens = "tiny", 32
    return args


def _publish(uri: str, size: dict[str, int], dtype: str, context: int) -> None:
    import torch
    from tests.workloads.tiny_dataset import documents
    from tests.workloads.tiny_model import tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelsmith_runtime import storage

    tok = tokenizer(list(documents(400, 0)))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv"],
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    tok.model_max_length = context
    with storage.publish(uri, {"kind": "PretrainJob"}) as (staging, _):
        model.save_pretrained(str(staging))
        tok.save_pretrained(str(staging))


def _baseline(path: str, device: str, max_tokens: int, requests: int) -> float:
    """Tokens/s of `generate`, one request at a time, after a warm-up request."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, device_map=device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer([PROMPT], return_tensors="pt").to(device)
    kwargs = {
        "max_new_tokens": max_tokens,
        "min_new_tokens": max_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.inference_mode():
        model.generate(**enc, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(requests):
            model.generate(**enc, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
    return requests * max_tokens / (time.perf_counter() - started)


async def _client(url: str, body: dict[str, Any], count: int, ttft: list[float]) -> int:
    import httpx

    tokens = 0
    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(count):
            started = time.perf_counter()
            first = True
            async with client.stream("POST", f"{url}/v1/completions", json=body) as answer:
                answer.raise_for_status()
                async for line in answer.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    if first:
                        ttft.append(time.perf_counter() - started)
                        first = False
                    usage = json.loads(line.removeprefix("data: ")).get("usage")
                    if usage:
                        tokens += usage["completion_tokens"]
    return tokens


async def _load(url: str, clients: int, requests: int, max_tokens: int) -> tuple[float, float]:
    """(output tokens/s, median time to first token) with ``clients`` streaming clients."""
    body = {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ttft: list[float] = []
    started = time.perf_counter()
    counts = await asyncio.gather(*(_client(url, body, requests, ttft) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    assert sum(counts) == clients * requests * max_tokens, counts  # noqa: S101
    return sum(counts) / elapsed, statistics.median(ttft)


def main() -> None:
    args = _args()
    levels = [int(c) for c in args.concurrency.split(",")]
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the server picks CUDA when it sees one
    os.environ.update(env)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from tests.workloads.serving import serve_model

    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    context = 64 + args.max_tokens + 64
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = str(Path(tmp) / "model")
        _publish(model, size, args.dtype, context)
        base = _baseline(model, args.device, args.max_tokens, args.baseline_requests)
        spec = {
            "batching": {"maxBatchSize": max(levels), "maxWaitMs": 5},
            "limits": {"maxTokens": args.max_tokens, "maxConcurrentRequests": max(levels) * 2},
        }
        rows = []
        with serve_model(model, spec, workdir=Path(tmp) / "server", name="bench", env=env) as srv:
            asyncio.run(_load(srv.url, 1, 1, args.max_tokens))  # warm-up
            for clients in levels:
                rate, ttft = asyncio.run(_load(srv.url, clients, args.requests, args.max_tokens))
                rows.append((clients, rate, ttft))
    print(
        f"\n{args.device}, size {args.size} ({args.dtype}), {args.max_tokens} new tokens per "
        f"request, {args.threads} thread(s)"
    )
    print(f"baseline: transformers generate, one request at a time: {base:.1f} tokens/s")
    print(f"{'clients':>8} {'server tok/s':>13} {'x generate':>11} {'p50 TTFT s':>11}")
    for clients, rate, ttft in rows:
        print(f"{clients:>8} {rate:>13.1f} {rate / base:>11.2f} {ttft:>11.3f}")


if __name__ == "__main__":
    main()
