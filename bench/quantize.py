"""QuantizeJob methods against the unquantized model, measured in one run.

For each method the real `modelsmith-runtime quantize` code path runs (in process, the
gate opened wide), and the published model is loaded back with
`AutoModelForCausalLM.from_pretrained` the way a server would. Printed per method:
perplexity and its change on held-out text, weight bytes on disk, and greedy decode
tokens/s at batch 1, each with its ratio to the unquantized model (the first row).

The model is trained on the spot (tests/workloads/tiny_model.py's generated grammar
and tokenizer, at the size the flags give), or taken from --model, a published
Hugging Face model directory. On a CPU everything runs on --threads threads (1 by
default: per-core figures that a busy machine does not scramble). At these sizes a
decode step is dominated by per-op overhead, not by weight bytes: quantized
tensor-subclass dispatch then costs more than the smaller weights save, and the CPU
figures say that, not what a multi-billion-parameter model would see.

    .venv/bin/python bench/quantize.py [--hidden 256 --layers 4 --steps 150]
    .venv/bin/python bench/quantize.py --device cuda     # adds fp8 (sm89+)
    .venv/bin/python bench/quantize.py --onnx            # + spec.export, onnxruntime

With --onnx the exportable methods run with `export: {format: onnx}` and a second
table compares one prefill forward (the exported graph has no KV cache) of the
sequence --prefill tokens long, onnxruntime on the CPU against the same published
model in torch, with the export's verified max abs logit difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CPU_METHODS = ("int8-weight-only", "dynamic-int8", "int4-weight-only", "gptq")
EXPORTABLE = ("int8-weight-only", "int4-weight-only", "gptq")  # api.quantize.EXPORTABLE


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", type=Path, help="a published HF model (default: train one)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150, help="training steps of the model")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64, help="decoded per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--onnx", action="store_true", help="export and time onnxruntime")
    parser.add_argument("--prefill", type=int, default=64, help="tokens per timed forward")
    return parser.parse_args()


def _task(
    model: str, method: str, output: str, data: Path, group: int, *, onnx: bool = False
) -> dict[str, Any]:
    from tests.workloads.tiny_model import quantize_config

    spec: dict[str, Any] = {
        "qualityGate": {
            "evalDataset": {"uri": str(data / "eval.jsonl")},
            "maxPerplexityIncreasePercent": 1000,
        },
        "resources": {"gpus": 1 if method == "fp8" else 0},
    }
    if method in ("int4-weight-only", "gptq"):
        spec["groupSize"] = group
    if method == "gptq":
        spec["calibration"] = {"dataset": {"uri": str(data / "calibration.txt")}, "samples": 64}
    if onnx and method in EXPORTABLE:
        spec["export"] = {"format": "onnx"}
    return quantize_config(model, output, method, **spec)


def _prefill_ms(path: str, tokens: int, repeats: int, threads: int) -> tuple[float, float]:
    """Best-of-``repeats`` ms of one forward over ``tokens`` tokens: (torch, onnxruntime)."""
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(4, model.config.vocab_size, (1, tokens), generator=torch.Generator())
    mask = torch.ones_like(ids)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        f"{path}/onnx/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    def best(step: Any) -> float:
        step()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return min(times) * 1e3

    with torch.inference_mode():
        torch_ms = best(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False))
    return torch_ms, best(lambda: session.run(["logits"], feed))


def _decode_rate(path: str, device: str, new_tokens: int, repeats: int) -> float:
    """Greedy tokens/s at batch 1, generating exactly ``new_tokens`` (EOS suppressed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, device_map=device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(["The old man"], return_tensors="pt").to(device)
    kwargs = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
    }
    with torch.inference_mode():
        model.generate(**enc, **kwargs)  # warm-up: lazy inits, kernel selection
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(**enc, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return new_tokens / best


def _data(root: Path) -> None:
    from tests.workloads.tiny_dataset import documents
    from tests.workloads.tiny_model import write_jsonl

    write_jsonl(root / "eval.jsonl", [{"text": t} for t in documents(100, 123)])
    (root / "calibration.txt").write_text("\n".join(documents(400, 77)) + "\n")


def main() -> None:
    args = _args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the runtime picks CUDA when it sees one
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from tests.workloads.tiny_model import Size, publish_model

    from modelsmith_runtime import hfmodel
    from modelsmith_runtime.quantize.main import run

    torch.set_num_threads(args.threads)
    hfmodel.quiet_transformers()
    methods = CPU_METHODS + (("fp8",) if args.device == "cuda" else ())
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        root = Path(tmp)
        _data(root)
        model = str(args.model) if args.model else str(root / "model")
        if not args.model:
            started = time.perf_counter()
            size = Size(
                hidden=args.hidden,
                intermediate=3 * args.hidden,
                layers=args.layers,
                heads=max(4, args.hidden // 64),
                steps=args.steps,
            )
            publish_model(model, size=size)
            print(f"trained {size} in {time.perf_counter() - started:.0f}s")
        base_rate = _decode_rate(model, args.device, args.new_tokens, args.repeats)
        base_size = hfmodel.weights_size(Path(model))
        rows = []
        exports: list[tuple[str, dict[str, float], tuple[float, float]]] = []
        for method in methods:
            task = root / f"{method}.json"
            output = str(root / method)
            spec = _task(model, method, output, root, args.group_size, onnx=args.onnx)
            task.write_text(json.dumps(spec))
            try:
                result = run(task)
            except Exception as exc:  # one method failing must not hide the others
                rows.append((method, None, f"{type(exc).__name__}: {exc}"[:90]))
                continue
            rate = _decode_rate(output, args.device, args.new_tokens, args.repeats)
            rows.append((method, (result.metrics, rate), ""))
            if "onnx_max_abs_diff" in result.metrics:
                ms = _prefill_ms(output, args.prefill, args.repeats, args.threads)
                exports.append((method, result.metrics, ms))
        print(f"\n{args.device}, {args.threads} thread(s), batch 1, {args.new_tokens} new tokens")
        print(
            f"{'method':<18} {'ppl before':>10} {'ppl after':>10} {'delta%':>8} "
            f"{'weights MB':>11} {'x fp':>6} {'tok/s':>8} {'x fp':>6}"
        )
        print(
            f"{'unquantized':<18} {'':>10} {'':>10} {'':>8} {base_size / 1e6:>11.3f} "
            f"{1:>6.2f} {base_rate:>8.1f} {1:>6.2f}"
        )
        for method, measured, error in rows:
            if measured is None:
                print(f"{method:<18} failed: {error}")
                continue
            m, rate = measured
            print(
                f"{method:<18} {m['perplexity_before']:>10.4f} {m['perplexity_after']:>10.4f} "
                f"{m['perplexity_increase_percent']:>8.3f} {m['size_bytes_after'] / 1e6:>11.3f} "
                f"{m['size_bytes_after'] / base_size:>6.2f} {rate:>8.1f} {rate / base_rate:>6.2f}"
            )

        if exports:
            print(
                f"\nONNX export: one forward of {args.prefill} tokens, batch 1, best of "
                f"{args.repeats}"
            )
            print(
                f"{'method':<18} {'max|dlogit|':>11} {'onnx MB':>8} {'torch ms':>9} "
                f"{'ort ms':>8} {'speedup':>8}"
            )
            for method, m, (torch_ms, ort_ms) in exports:
                print(
                    f"{method:<18} {m['onnx_max_abs_diff']:>11.2e} "
                    f"{m['onnx_size_bytes'] / 1e6:>8.3f} {torch_ms:>9.2f} {ort_ms:>8.2f} "
                    f"{torch_ms / ort_ms:>8.2f}"
                )


if __name__ == "__main__":
    main()
