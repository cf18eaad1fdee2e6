"""Training throughput of the PretrainJob loop against a plain PyTorch/HF loop.

Both loops train the same transformers model (same config, same seed, same precision,
same micro-batch and accumulation, AdamW and clipping) in this process, one after the
other, and the ratio ours/plain says what the trainer's own machinery costs: reading
packed shards through the seeded sequence order, the per-step loss all-reduce and
NaN check, the scheduler and the metrics bookkeeping. MFU is printed on a GPU.

    .venv/bin/python bench/train_throughput.py                   # tiny dense + MoE, CPU
    .venv/bin/python bench/train_throughput.py --size 125m --moe-size small   # GPU
    .venv/bin/python bench/train_throughput.py --size 1b --micro-batch 4 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig

from modelsmith.api.pretrain import Architecture, Training
from modelsmith_runtime.shards import ShardWriter
from modelsmith_runtime.train.data import Batches
from modelsmith_runtime.train.distributed import Dist
from modelsmith_runtime.train.loop import Trainer
from modelsmith_runtime.train.metrics import peak_flops
from modelsmith_runtime.train.model import (
    SpecialTokens,
    build_model,
    flops_per_token,
    model_class,
    model_config,
    parameter_counts,
)
from modelsmith_runtime.train.schedule import build_optimizer, build_scheduler

DENSE = {
    "tiny": {"layers": 2, "hiddenSize": 128, "heads": 4},
    "125m": {"layers": 12, "hiddenSize": 768, "heads": 12},
    "1b": {"layers": 22, "hiddenSize": 2048, "heads": 32, "kvHeads": 4, "intermediateSize": 5632},
}
"""125m is GPT-2-small's shape; 1b is TinyLlama-1.1B's."""
MOE = {
    "tiny": {"layers": 2, "hiddenSize": 128, "heads": 4, "experts": 4, "topK": 2},
    "small": {
        "layers": 12,
        "hiddenSize": 768,
        "heads": 12,
        "experts": 8,
        "topK": 2,
        "intermediateSize": 1024,
    },
}
DEFAULT_VOCAB = {"tiny": 2048, "small": 32000, "125m": 32000, "1b": 32000}
SEED = 0


@dataclass(frozen=True)
class Setup:
    config: PretrainedConfig
    training: Training
    accumulation: int
    autocast: torch.dtype | None
    dataset: Path


def _dataset(root: Path, vocab: int, sequence_length: int, sequences: int) -> Path:
    writer = ShardWriter(root, sequence_length, vocab, shard_bytes=64 << 20)
    rng = np.random.default_rng(SEED)
    for _ in range(sequences):
        writer.add(rng.integers(0, vocab, sequence_length))
    writer.close()
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def ours(s: Setup, d: Dist, warmup: int, steps: int) -> float:
    """Seconds for `steps` optimizer steps of the PretrainJob loop."""
    t = s.training
    batches = Batches.for_rank(s.dataset, t.sequence_length, t, d.rank, d.world)
    model = build_model(s.config, d.device, SEED)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t.schedule, 0, warmup + steps)
    aux = float(getattr(s.config, "router_aux_loss_coef", 0.0) or 0.0)
    trainer = Trainer(
        model, optimizer, scheduler, d, autocast=s.autocast, grad_clip=t.grad_clip, aux_coef=aux
    )
    state = {"position": 0, "step": 0}

    def step() -> None:
        micro = batches.step(state["position"])
        trainer.step(micro, state["step"] + 1, stop=False)
        state["position"] += t.global_batch_size
        state["step"] += 1

    return _timed(step, warmup, steps, d.device)


def plain(s: Setup, device: torch.device, warmup: int, steps: int) -> float:
    """The textbook loop: random tokens already on the device, no checks, no sync."""
    t = s.training
    torch.manual_seed(SEED)
    with device:
        model = model_class(s.config)(s.config)
    model.config.use_cache = False
    model.train()
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=t.learning_rate, fused=cuda or None, foreach=None if cuda else True
    )
    shape = (s.accumulation, t.micro_batch_size, t.sequence_length)
    data = torch.randint(0, s.config.vocab_size, shape, device=device)

    def forward() -> contextlib.AbstractContextManager[Any]:
        if s.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=s.autocast)

    def step() -> None:
        for ids in data:
            with forward():
                loss = model(input_ids=ids, labels=ids).loss
            (loss / s.accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed(step, warmup, steps, device)


def bench(name: str, arch: dict[str, Any], args: argparse.Namespace, d: Dist, root: Path) -> None:
    vocab = args.vocab or DEFAULT_VOCAB[args.size if name == "dense" else args.moe_size]
    training = Training(
        global_batch_size=args.micro_batch * args.accumulation,
        micro_batch_size=args.micro_batch,
        sequence_length=args.seq,
        learning_rate=3e-4,
        steps=args.steps,
        seed=SEED,
    )
    config = model_config(
        Architecture.model_validate({**arch, "type": "moe" if "experts" in arch else "dense"}),
        vocab,
        args.seq,
        SpecialTokens(None, 0, None),
    )
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    sequences = training.global_batch_size * (args.steps + args.warmup) * 2
    dataset = _dataset(root / name, vocab, args.seq, sequences)
    setup = Setup(config, training, args.accumulation, autocast, dataset)
    tokens = training.global_batch_size * args.seq * args.steps

    rates = {"plain": 0.0, "ours": 0.0}
    for _ in range(args.rounds):  # alternate, keep the best: the host may be shared
        for label, measure in (
            ("plain", lambda: plain(setup, d.device, args.warmup, args.steps)),
            ("ours", lambda: ours(setup, d, args.warmup, args.steps)),
        ):
            rates[label] = max(rates[label], tokens / measure())
            if d.device.type == "cuda":
                torch.cuda.empty_cache()
    total, active = parameter_counts(config)
    peak = peak_flops(d.device, half_precision=autocast is not None)
    fpt = flops_per_token(config, args.seq)
    print(
        f"{name:5s} params={total / 1e6:.1f}M active={active / 1e6:.1f}M "
        f"seq={args.seq} micro={args.micro_batch}x{args.accumulation} {args.precision}"
    )
    for label, rate in rates.items():
        mfu = f" mfu={fpt * rate / peak:.1%}" if peak else ""
        print(f"  {label:5s} {rate:12,.0f} tokens/s{mfu}")
    print(f"  ratio ours/plain = {rates['ours'] / rates['plain']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(DENSE), default="tiny")
    parser.add_argument("--moe-size", choices=sorted(MOE), default="tiny")
    parser.add_argument("--only", choices=("dense", "moe"), default=None)
    parser.add_argument("--seq", type=int, default=None, help="default: 128 tiny, 2048 else")
    parser.add_argument("--micro-batch", type=int, default=None, help="default: 4 tiny, 8 else")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default=None)
    args = parser.parse_args()
    d = Dist.start()
    tiny = args.size == "tiny" and args.moe_size == "tiny"
    args.seq = args.seq or (128 if tiny else 2048)
    args.micro_batch = args.micro_batch or (4 if tiny else 8)
    args.precision = args.precision or ("bf16" if d.device.type == "cuda" else "fp32")
    name = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu"
    print(f"device={d.device} ({name}) threads={torch.get_num_threads()} torch={torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "dense"):
            bench("dense", DENSE[args.size], args, d, Path(tmp))
        if args.only in (None, "moe"):
            bench("moe", MOE[args.moe_size], args, d, Path(tmp))


if __name__ == "__main__":
    main()
