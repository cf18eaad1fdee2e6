"""The optimizer step and the loop around it: accumulate, check, clip, step, report, save.

Every step ends with one small all-reduce of (loss, aux loss, stop request). That sync
is what lets every rank agree on the two ways a run ends early: a non-finite loss,
which stops all ranks together instead of leaving some waiting in a collective, and a
SIGTERM (eviction, `suspend: true`), on which the run saves a checkpoint before it
exits so the retry loses no work. Under a loss-driven mixture the same all-reduce
carries each source's loss sum and sequence count (mixture.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler
from transformers import PretrainedConfig

from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.train.checkpoint import CheckpointStore, DcpTensors, Saved, Tensors
from modelsmith_runtime.train.data import Batches
from modelsmith_runtime.train.distributed import Dist
from modelsmith_runtime.train.metrics import MetricsSink
from modelsmith_runtime.train.mixture import LossDrivenMixture, sequence_losses
from modelsmith_runtime.train.routing import RoutingMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepStats:
    loss: float
    """Language-model cross-entropy, mean over the global batch."""
    aux_loss: float | None
    grad_norm: float | None
    learning_rate: float
    stop: bool
    source_loss: list[float] | None = None
    """Per source: the sum of its sequences' mean losses, all ranks (a mixture run)."""
    source_count: list[float] | None = None
    """Per source: its sequences in the global batch."""


class Trainer:
    """One optimizer step over a rank's micro-batches (gradient accumulation).

    The step is the same for every strategy: forward and backward each micro-batch,
    agree on the loss across ranks, refuse a non-finite one before the optimizer
    touches the weights, then step. What differs is in `_micro_step` and
    `_optimizer_step` (DeepSpeed's engine owns backward, loss scaling, clipping and the
    step: deepspeed_engine.py), and in `tensors`, which a checkpoint saves.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        d: Dist,
        *,
        autocast: torch.dtype | None,
        grad_clip: float,
        aux_coef: float = 0.0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.d = d
        self.autocast = autocast
        self.grad_clip = grad_clip
        self.aux_coef = aux_coef
        # fp16 overflows without loss scaling; bf16 and fp32 do not need it.
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=autocast == torch.float16)
        self.tensors: Tensors = DcpTensors(model, optimizer)

    def _forward_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.autocast)

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients only on the last micro-batch. FSDP2 reduce-scatters
        every time, which costs bandwidth but keeps gradients sharded (memory)."""
        if not last and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _micro_step(self, ids: torch.Tensor, n: int, last: bool) -> Any:
        """Forward and backward of one of ``n`` micro-batches; the model's output."""
        with self._sync_context(last):
            with self._forward_context():
                out = self.model(input_ids=ids, labels=ids, use_cache=False)
            self.scaler.scale(out.loss / n).backward()
        return out

    def _optimizer_step(self) -> float | None:
        """Clip, step, advance the schedule; the gradient norm when it was computed."""
        grad_norm = None
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
            grad_norm = float(full() if full is not None else norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def step(
        self,
        micro_batches: list[np.ndarray[Any, Any]],
        step: int,
        stop: bool,
        sources: list[np.ndarray[Any, Any]] | None = None,
        source_count: int = 0,
    ) -> StepStats:
        """``sources``: each micro-batch's sequence sources, to measure loss by source."""
        n = len(micro_batches)
        totals = torch.zeros(2, dtype=torch.float32, device=self.d.device)
        by_source = torch.zeros(2, source_count, dtype=torch.float32, device=self.d.device)
        has_aux = False
        for i, batch in enumerate(micro_batches):
            ids = torch.from_numpy(batch)
            if self.d.device.type == "cuda":
                ids = ids.pin_memory()
            ids = ids.to(self.d.device, non_blocking=True)
            out = self._micro_step(ids, n, last=i == n - 1)
            if sources is not None:
                tags = torch.from_numpy(sources[i]).to(self.d.device)
                by_source[0].index_add_(0, tags, sequence_losses(out.logits, ids))
                by_source[1].index_add_(0, tags, torch.ones_like(tags, dtype=torch.float32))
            aux = out.aux_loss.detach().float() if out.get("aux_loss") is not None else None
            lm = out.loss.detach().float() - (self.aux_coef * aux if aux is not None else 0.0)
            totals[0] += lm / n
            if aux is not None:
                totals[1] += aux / n
                has_aux = True
        summed = self.d.all_sum([*totals.tolist(), float(stop), *by_source.reshape(-1).tolist()])
        loss, aux_sum, stops = summed[:3]
        loss, aux_sum = loss / self.d.world, aux_sum / self.d.world
        if not math.isfinite(loss) or not math.isfinite(aux_sum):
            raise BadInputError(
                "NaNLoss",
                f"loss is {loss} at step {step}: the run diverged. Lower training.learningRate, "
                "raise warmupRatio or set gradClip; a retry from the last checkpoint would "
                "replay the same data and diverge the same way",
            )
        learning_rate = float(self.optimizer.param_groups[0]["lr"])
        grad_norm = self._optimizer_step()
        aux_loss = aux_sum if has_aux else None
        per_source = summed[3:]
        return StepStats(
            loss,
            aux_loss,
            grad_norm,
            learning_rate,
            stops > 0,
            per_source[:source_count] if sources is not None else None,
            per_source[source_count:] if sources is not None else None,
        )

    def state_dict(self) -> dict[str, Any]:
        """The trainer's JSON part of a checkpoint (the tensors are in `tensors`)."""
        return {"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights in host memory on rank 0 (every rank must call it;
        the other ranks may get an empty dict)."""
        return get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )


@dataclass(frozen=True)
class Progress:
    """What a checkpoint records besides the tensors; JSON in trainer_state.json."""

    step: int = 0
    position: int = 0
    """Sequences of the data stream consumed so far (see data.py)."""
    tokens: int = 0
    loss: float | None = None
    first_loss: float | None = None
    """The loss of the run's first step, kept across resumes: what "the loss fell" is
    measured against (a fresh model's is about ln(vocabulary size))."""


@contextlib.contextmanager
def _sigterm_requests() -> Iterator[list[bool]]:
    """SIGTERM (eviction, suspend) sets a flag the loop reads; the default after."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        # Ray Train runs the loop in a thread of its worker actor, where Python cannot
        # install signal handlers; there the pod's SIGTERM goes to the Ray driver.
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: saving a checkpoint and stopping after this step")
        flag[0] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Loop:
    trainer: Trainer
    batches: Batches
    store: CheckpointStore
    sink: MetricsSink
    total_steps: int
    tokens_per_step: int
    interval: int
    log_every: int
    flops_per_token: float
    peak_flops: float | None
    progress: Progress
    identity: dict[str, Any]
    """What a checkpoint must match to be resumed (architecture, vocabulary)."""
    config: PretrainedConfig
    saved: Saved | None = None
    """The newest committed checkpoint: where a retry would resume."""
    resumed_from: int | None = None
    """The step this process resumed at: how a user (and a test) tells a retry that
    continued from one that started over."""
    train_seconds: float = 0.0
    trained_tokens: int = 0
    routing: RoutingMeter | None = None
    """An MoE's per-expert token counts, read at every report (routing.py)."""
    model_facts: dict[str, float] = field(default_factory=dict)
    """Figures of the model itself (trainable share), in every report and the result."""
    mixture: LossDrivenMixture | None = None
    """The loss-driven mixture that draws the batches instead of `batches`."""

    def trainer_state(self) -> dict[str, Any]:
        state = {
            **asdict(self.progress),
            **self.trainer.state_dict(),
            "tensors": self.trainer.tensors.layout,
            "world": self.trainer.d.world,
            "identity": self.identity,
        }
        if self.mixture is not None:
            state["mixture"] = self.mixture.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.progress = Progress(
            step=int(state["step"]),
            position=int(state["position"]),
            tokens=int(state["tokens"]),
            loss=state.get("loss"),
            first_loss=state.get("first_loss"),
        )
        self.trainer.load_state_dict(state)
        if self.mixture is not None:
            self.mixture.load_state_dict(state["mixture"])

    def _save(self) -> None:
        tensors = self.trainer.tensors
        self.saved = self.store.save(self.progress.step, tensors, self.trainer_state())

    def _report(self, stats: StepStats, seconds: float, tokens: int) -> None:
        rate = tokens / seconds if seconds > 0 else 0.0
        values = {
            "loss": stats.loss,
            "learning_rate": stats.learning_rate,
            "tokens_per_second": rate,
        }
        if stats.aux_loss is not None:
            values["aux_loss"] = stats.aux_loss
        if stats.grad_norm is not None:
            values["grad_norm"] = stats.grad_norm
        if self.peak_flops:
            values["mfu"] = self.flops_per_token * rate / (self.peak_flops * self.trainer.d.world)
        if self.routing is not None:  # a collective: every rank reports at the same steps
            values.update(self.routing.collect(self.trainer.d))
        values.update(self.model_facts)
        by_source = None
        if self.mixture is not None:
            by_source = {"mixture_weight": self.mixture.weights, "source_loss": self.mixture.losses}
        values["total_steps"] = float(self.total_steps)
        self.sink.record(self.progress.step, values, by_source)

    def run(self) -> None:
        first = self.progress.step
        window_start, window_tokens = time.perf_counter(), 0
        with _sigterm_requests() as stop:
            while self.progress.step < self.total_steps:
                started = time.perf_counter()
                if self.mixture is None:
                    micro, sources = self.batches.step(self.progress.position), None
                else:
                    micro, sources = self.mixture.step(self.progress.step)
                count = self.mixture.sources if self.mixture is not None else 0
                stats = self.trainer.step(micro, self.progress.step + 1, stop[0], sources, count)
                p = self.progress
                self.progress = replace(
                    p,
                    step=p.step + 1,
                    position=p.position + self.batches.global_batch,
                    tokens=p.tokens + self.tokens_per_step,
                    loss=stats.loss,
                    first_loss=stats.loss if p.first_loss is None else p.first_loss,
                )
                self.train_seconds += time.perf_counter() - started
                self.trained_tokens += self.tokens_per_step
                window_tokens += self.tokens_per_step
                step = self.progress.step
                if self.mixture is not None and stats.source_loss and stats.source_count:
                    moved = self.mixture.observe(step, stats.source_loss, stats.source_count)
                    if moved and self.trainer.d.is_main:
                        log.info("mixture weights after step %d: %s", step, self.mixture.weights)
                if step % self.log_every == 0 or step in (first + 1, self.total_steps):
                    now = time.perf_counter()
                    self._report(stats, now - window_start, window_tokens)
                    window_start, window_tokens = now, 0
                if step % self.interval == 0 or stats.stop:
                    self._save()
                if stats.stop:
                    raise TransientError("Interrupted", f"stopped by SIGTERM after step {step}")
