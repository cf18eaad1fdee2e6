"""The DeepSpeed config a PretrainJob asks for, as a plain dict.

Pure (DeepSpeed is not imported), so every branch is unit-tested without a process
group. Only what the spec decides is set; the rest keeps DeepSpeed's defaults (bucket
sizes, overlapped communication, contiguous gradients), which are tuned for the
common case and are not ours to second-guess without a benchmark.

What stays outside DeepSpeed on purpose: the optimizer and the learning-rate
schedule are the same objects the DDP and FSDP runs build (schedule.py), so the
three strategies train the same update rule and their losses are comparable; the
schedule is stepped by the trainer once per optimizer step, never by the engine,
which would skip it on an fp16 overflow step where the other strategies do not.
"""

from __future__ import annotations

import sys
from typing import Any

from modelsmith.api.pretrain import Distribution, Offload, Precision
from modelsmith_runtime.train.plan import Plan

DEFAULT_ZERO_STAGE = 2
"""ZeRO-2 when zeroStage is unset. It partitions what dominates Adam's memory, the
fp32 master weights, both moments and the gradients (14 of the 16 bytes a parameter
costs in mixed precision), and still moves no more data per step than DDP: one
reduce-scatter of gradients and one all-gather of updated weights, the two halves of
DDP's all-reduce. ZeRO-3 also partitions the weights, at 1.5x that traffic plus a
gather before every layer in forward and backward; it is what a model whose 16-bit
weights do not fit one GPU needs, and such a run says so with zeroStage: 3 (or uses
strategy fsdp). ZeRO-1 partitions only the optimizer state and is rarely better."""

LOSS_SCALE_WINDOW = 2000
"""fp16 dynamic loss scaling with the dynamics of torch's GradScaler, which the DDP
and FSDP runs use: start at 2^16, halve on an overflow at once (hysteresis 1), double
after this many clean steps."""


def zero_stage(distribution: Distribution) -> int:
    return distribution.zero_stage or DEFAULT_ZERO_STAGE


def deepspeed_config(plan: Plan, device_type: str) -> dict[str, Any]:
    """The config for `deepspeed.initialize`; ``device_type`` is "cuda" or "cpu".

    `zero_force_ds_cpu_optimizer` is off because the optimizer is chosen by us
    (deepspeed_engine.py): DeepSpeedCPUAdam where its compiled op is in the image,
    torch's AdamW elsewhere, which DeepSpeed would otherwise refuse under offload.
    Gradients are reduced in fp32 even in a bf16 run, as the FSDP runs do: a bf16
    sum over many ranks loses the low bits of small gradients.
    """
    spec, t = plan.spec, plan.spec.training
    stage = zero_stage(spec.distribution)
    zero: dict[str, Any] = {"stage": stage}
    if spec.distribution.offload == Offload.CPU:
        host = {"device": "cpu", "pin_memory": device_type == "cuda"}
        zero["offload_optimizer"] = host
        if stage == 3:
            zero["offload_param"] = dict(host)
    config: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": plan.accumulation,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": sys.maxsize,  # the loop logs metrics itself
        "wall_clock_breakdown": False,
    }
    if spec.precision == Precision.BF16:
        config["bf16"] = {"enabled": True}
        config["communication_data_type"] = "fp32"
    elif spec.precision == Precision.FP16:
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # 0: dynamic
            "initial_scale_power": 16,
            "loss_scale_window": LOSS_SCALE_WINDOW,
            "hysteresis": 1,
            "min_loss_scale": 1,
        }
        config["communication_data_type"] = "fp32"
    return config
