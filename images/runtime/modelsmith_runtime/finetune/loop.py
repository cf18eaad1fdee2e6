"""The supervised fine-tuning loop: a held-out split, token-weighted loss, AdamW.

A plain loop rather than transformers' Trainer: the loss must count response tokens
only and weigh every token of a step equally however the step is cut into
micro-batches (the sum of token losses over the whole step, divided by the step's
response tokens, which gradient accumulation with per-micro-batch means gets wrong),
and the run needs nothing of Trainer's (no checkpoints: a fine-tune of this size
reruns faster than it resumes).

The eval split is drawn with a fixed seed, so the examples held out are the same on a
retry and eval_loss_before / eval_loss compare the same data.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from modelsmith.api.finetune import Hyperparameters
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.finetune.tokens import IGNORE, Tokenized
from modelsmith_runtime.gauges import Gauges
from modelsmith_runtime.progress import ProgressReporter

log = logging.getLogger(__name__)

SEED = 0
GRAD_CLIP = 1.0
RECENT = 10
"""train_loss is the mean over the last this-many steps: where the run ended, not its
average since the first step."""


@dataclass(frozen=True)
class Outcome:
    steps: int
    train_loss: float
    eval_loss_before: float | None
    eval_loss: float | None


def split(items: list[Tokenized], fraction: float) -> tuple[list[Tokenized], list[Tokenized]]:
    """(train, eval): at least one example on each side whenever a split is asked for."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(SEED).shuffle(order)  # noqa: S311 - a reproducible split, no secret
    held = min(max(1, round(len(items) * fraction)), len(items) - 1)
    return [items[i] for i in order[held:]], [items[i] for i in order[:held]]


def _predicted(item: Tokenized) -> int:
    """Tokens the loss counts: a label is predicted from the token before it."""
    return sum(1 for label in item.labels[1:] if label != IGNORE)


def _collate(items: list[Tokenized], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


LossSum = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
"""(model, batch) -> the loss summed over the batch's response tokens."""


def _loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2),
        batch["labels"][:, 1:],
        ignore_index=IGNORE,
        reduction="sum",
    )


PROMETHEUS_HELP = {
    "loss": "Training loss of the last optimizer step.",
    "learning_rate": "Learning rate.",
    "step": "Optimizer steps done.",
    "total_steps": "Optimizer steps in the whole run.",
    "eval_loss_before": "Held-out loss of the base model, before training.",
    "eval_loss": "Held-out loss after training.",
}


class Loop:
    def __init__(
        self,
        model: Any,
        hp: Hyperparameters,
        *,
        pad_id: int,
        device: torch.device,
        autocast: torch.dtype | None,
        loss: LossSum | None = None,
    ) -> None:
        """``loss`` is what training minimises (distillation's differs); evaluation is
        always the cross-entropy on the held-out responses."""
        self.model = model
        self.loss = loss or _loss_sum
        self.hp = hp
        self.pad_id = pad_id
        self.device = device
        self.autocast = autocast
        self.reporter = ProgressReporter()
        self.gauges = Gauges("modelsmith_finetune_", PROMETHEUS_HELP)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _micro(self, items: list[Tokenized]) -> Iterator[dict[str, torch.Tensor]]:
        size = self.hp.micro_batch_size
        for start in range(0, len(items), size):
            yield _collate(items[start : start + size], self.pad_id, self.device)

    def evaluate(self, items: list[Tokenized], model: Any = None) -> float:
        """Mean loss per response token over ``items``, of ``model`` (the one trained
        unless told: a distillation's teacher is scored on the same examples)."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        total, tokens = 0.0, sum(_predicted(t) for t in items)
        with torch.inference_mode(), self._autocast():
            for batch in self._micro(items):
                total += float(_loss_sum(model, batch))
        model.train(was_training)
        return total / max(tokens, 1)

    def total_steps(self, train: list[Tokenized]) -> int:
        return max(1, math.ceil(len(train) * self.hp.epochs / self.hp.batch_size))

    def _batches(self, train: list[Tokenized]) -> Iterator[list[Tokenized]]:
        """Batches of batch_size drawn epoch after epoch, each epoch in a new order."""
        rng = random.Random(SEED)  # noqa: S311 - a reproducible order, no secret
        pending: list[Tokenized] = []
        while True:
            order = list(range(len(train)))
            rng.shuffle(order)
            for i in order:
                pending.append(train[i])
                if len(pending) == self.hp.batch_size:
                    yield pending
                    pending = []

    def run(self, train: list[Tokenized], held_out: list[Tokenized]) -> Outcome:
        hp = self.hp
        total = self.total_steps(train)
        before = self.evaluate(held_out) if held_out else None
        self.gauges.set({"total_steps": float(total)})
        if before is not None:
            self.gauges.set({"eval_loss_before": before})
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(
            optimizer, round(hp.warmup_ratio * total), total
        )
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast == torch.float16)
        log_every = max(1, total // 10)
        recent: list[float] = []
        batches = self._batches(train)
        self.model.train()
        for step in range(1, total + 1):
            items = next(batches)
            tokens = max(1, sum(_predicted(t) for t in items))
            step_loss = 0.0
            for batch in self._micro(items):
                with self._autocast():
                    loss = self.loss(self.model, batch) / tokens
                scaler.scale(loss).backward()
                step_loss += float(loss.detach())
            if not math.isfinite(step_loss):
                raise BadInputError(
                    "NaNLoss",
                    f"step {step}: the loss is {step_loss}; lower "
                    "hyperparameters.learningRate, or train in bf16/fp32 instead of fp16",
                )
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            recent = [*recent[-(RECENT - 1) :], step_loss]
            self.reporter.report(step, total, force=step == total)
            lr = scheduler.get_last_lr()[0]
            self.gauges.set({"step": float(step), "loss": step_loss, "learning_rate": lr})
            if step % log_every == 0 or step == total:
                log.info(
                    "step %d/%d loss %.4f lr %.2e",
                    step,
                    total,
                    step_loss,
                    lr,
                )
        after = self.evaluate(held_out) if held_out else None
        if after is not None:
            self.gauges.set({"eval_loss": after})
        return Outcome(total, sum(recent) / len(recent), before, after)
