"""AdamW and the learning-rate schedules, taken from torch and transformers as they are.

The schedules are transformers' (the ones its Trainer uses), so a run here and a
fine-tune there decay the same way: cosine and linear go to zero at the last step,
constant holds the peak after warm-up, and wsd (warmup-stable-decay, MiniCPM) holds
the peak and decays over the last `WSD_DECAY` share of the run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_wsd_schedule,
)

from modelsmith.api.pretrain import Schedule, Training

WSD_DECAY = 0.2
BETAS = (0.9, 0.95)
"""The pretraining betas of GPT-3, Llama and OLMo: 0.999 reacts too slowly to spikes."""


def parameter_groups(model: nn.Module, training: Training) -> list[dict[str, Any]]:
    """No weight decay on norms and biases (1-D tensors), as Llama trains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": training.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, training: Training, *, on_host: bool = False
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`.

    One fused kernel per step where the parameters live on the GPU; the multi-tensor
    (foreach) path where they live in host memory (CPU, or FSDP's CPU offload).
    ``on_host`` says the optimizer will step in host memory although the parameters
    are on the GPU now: DeepSpeed's offload hands it host copies later.
    """
    groups = parameter_groups(model, training)
    cuda = next(model.parameters()).device.type == "cuda" and not on_host
    return torch.optim.AdamW(
        groups,
        lr=training.learning_rate,
        betas=BETAS,
        fused=cuda or None,
        foreach=None if cuda else True,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Schedule, warmup: int, total: int
) -> LRScheduler:
    if schedule == Schedule.COSINE:
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if schedule == Schedule.LINEAR:
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if schedule == Schedule.CONSTANT:
        return get_constant_schedule_with_warmup(optimizer, warmup)
    decay = max(1, int(WSD_DECAY * total))
    return get_wsd_schedule(
        optimizer, warmup, decay, num_stable_steps=max(0, total - warmup - decay)
    )
