"""One rank's whole run: build, resume, train, publish, and say how it ended.

Failures are sorted for the operator here. Divergence and a checkpoint that does not
fit the spec are bad input (exit 2, not retried); anything else becomes a
TransientError carrying the newest committed checkpoint and the progress, which the
operator shows while the Job retries the pod and the retry resumes from there.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

import torch
import transformers
from torch import nn
from transformers import MixtralConfig, PretrainedConfig

from modelsmith.api.pretrain import Precision, Strategy
from modelsmith.contract import COMPLETION_MARKER, CheckpointInfo, ProgressInfo, Result
from modelsmith_runtime import freeze, storage, uris
from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.train import routing
from modelsmith_runtime.train.checkpoint import DCP_LAYOUT, CheckpointStore, Saved
from modelsmith_runtime.train.data import Batches
from modelsmith_runtime.train.distributed import Dist, wrap
from modelsmith_runtime.train.loop import Loop, Progress, Trainer
from modelsmith_runtime.train.metrics import MetricsSink, peak_flops
from modelsmith_runtime.train.mixture import MIXTURE_REPORT, LossDrivenMixture, build_mixture
from modelsmith_runtime.train.model import (
    build_model,
    export,
    flops_per_token,
    model_config,
    special_tokens,
)
from modelsmith_runtime.train.plan import Plan
from modelsmith_runtime.train.schedule import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16, Precision.FP32: None}
"""Autocast dtype per precision; fp32 runs without autocast. The model is exported in
the training precision (fp32 master weights cast down), as Hugging Face models ship."""


def train(plan: Plan) -> Result:
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()
    d = Dist.start()
    try:
        return _train(plan, d)
    finally:
        d.stop()


def _identity(plan: Plan) -> dict[str, Any]:
    """What a checkpoint must match to be resumed into this run."""
    arch = plan.spec.architecture.model_dump(mode="json", exclude_none=True)
    identity: dict[str, Any] = {"architecture": arch, "vocabSize": plan.vocab_size}
    if plan.spec.freeze is not None:  # the optimizer holds only the trainable tensors
        identity["freeze"] = plan.spec.freeze.model_dump(mode="json", exclude_none=True)
    return identity


def _model(plan: Plan, config: PretrainedConfig, d: Dist) -> tuple[nn.Module, dict[str, float]]:
    """The model to train (initFrom, freeze, routing) and its trainable share."""
    spec = plan.spec
    model = build_model(
        config,
        d.device,
        spec.training.seed,
        init_dir=plan.init_dir,
        capacity_factor=spec.architecture.capacity_factor,
    )
    frozen = freeze.apply(model, spec.freeze).parameters if spec.freeze is not None else 0
    total = sum(p.numel() for p in model.parameters())
    return model, {"trainable_share": (total - frozen) / total}


def _trainer(plan: Plan, model: nn.Module, config: PretrainedConfig, d: Dist) -> Trainer:
    spec, t = plan.spec, plan.spec.training
    autocast = DTYPES[spec.precision]
    dist_spec = spec.distribution
    aux_coef = config.router_aux_loss_coef if isinstance(config, MixtralConfig) else 0.0
    if dist_spec.strategy == Strategy.DEEPSPEED:
        from modelsmith_runtime.train.deepspeed_engine import deepspeed_trainer

        return deepspeed_trainer(model, plan, d, aux_coef=aux_coef)
    model = wrap(model, dist_spec.strategy, dist_spec.offload, d, half=autocast)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t.schedule, plan.warmup_steps, plan.total_steps)
    return Trainer(
        model, optimizer, scheduler, d, autocast=autocast, grad_clip=t.grad_clip, aux_coef=aux_coef
    )


def _build(plan: Plan, d: Dist, store: CheckpointStore) -> Loop:
    spec, t = plan.spec, plan.spec.training
    config = model_config(
        spec.architecture, plan.vocab_size, plan.sequence_length, special_tokens(plan.tokenizer_dir)
    )
    batches = Batches.for_rank(plan.dataset_dir, plan.sequence_length, t, d.rank, d.world)
    mixture = build_mixture(plan.spec, plan.dataset_dir, plan.sequence_length, d.rank, d.world)
    model, facts = _model(plan, config, d)
    meter = routing.meter(model)
    trainer = _trainer(plan, model, config, d)
    tensorboard = uris.local_path(plan.checkpoints)
    return Loop(
        trainer=trainer,
        batches=batches,
        store=store,
        sink=MetricsSink(d.is_main, tensorboard / "tensorboard" if tensorboard else None),
        total_steps=plan.total_steps,
        tokens_per_step=plan.tokens_per_step,
        interval=spec.checkpoint.interval_steps,
        log_every=plan.log_every,
        flops_per_token=flops_per_token(config, plan.sequence_length),
        peak_flops=peak_flops(d.device, half_precision=spec.precision != Precision.FP32),
        progress=Progress(),
        identity=_identity(plan) | ({"mixture": list(mixture.names)} if mixture else {}),
        config=config,
        mixture=mixture,
        routing=meter,
        model_facts=facts,
    )


def _resume(plan: Plan, loop: Loop, store: CheckpointStore, d: Dist) -> None:
    if not plan.spec.checkpoint.resume:
        store.clear()
        return
    saved = store.latest()
    if saved is None:
        return
    state = store.state(saved)
    for key, mine, default in (
        ("identity", loop.identity, None),
        ("tensors", loop.trainer.tensors.layout, DCP_LAYOUT),
    ):
        if state.get(key, default) != mine:
            raise BadInputError(
                "CheckpointMismatch",
                f"{saved.uri} was written for {state.get(key, default)}, this run is {mine}; "
                "set checkpoint.resume: false to start over",
            )
    store.load(saved, loop.trainer.tensors)
    loop.restore(state)
    loop.saved = saved
    loop.resumed_from = saved.step
    if d.is_main:
        log.info("resuming from step %d of %d (%s)", saved.step, plan.total_steps, saved.uri)


def _publish(plan: Plan, loop: Loop, d: Dist) -> storage.Published:
    """Gather the full weights and let rank 0 alone publish them with the tokenizer;
    what was published is rank 0's (empty elsewhere, until the broadcast)."""
    full = loop.trainer.full_state_dict()
    published = storage.Published()
    if d.is_main:
        dtype = DTYPES[plan.spec.precision] or torch.float32
        meta = {"kind": "PretrainJob", "steps": loop.progress.step, "tokens": loop.progress.tokens}
        with storage.publish(
            plan.output, meta, producer=plan.producer, version=plan.spec.version
        ) as (staging, published):
            export(full, loop.config, dtype, staging)
            for file in sorted(plan.tokenizer_dir.iterdir()):
                if file.is_file() and file.name != COMPLETION_MARKER:
                    shutil.copy2(file, staging / file.name)
            if loop.mixture is not None:
                (staging / MIXTURE_REPORT).write_text(json.dumps(loop.mixture.report(), indent=2))
    return published


def _result(plan: Plan, loop: Loop, published: storage.Published) -> Result:
    p = loop.progress
    rate = loop.trained_tokens / loop.train_seconds if loop.train_seconds > 0 else 0.0
    metrics = {
        "loss": p.loss if p.loss is not None else float("nan"),
        "tokens": float(p.tokens),
        "steps": float(p.step),
    }
    if p.first_loss is not None:
        metrics["initial_loss"] = p.first_loss
    if loop.resumed_from is not None:
        metrics["resumed_from_step"] = float(loop.resumed_from)
    if loop.mixture is not None:
        metrics |= _by_source(loop.mixture)
    if rate:  # nothing to measure when a retry found the run already finished
        metrics["tokens_per_second"] = rate
    if loop.peak_flops and rate:
        metrics["mfu"] = loop.flops_per_token * rate / (loop.peak_flops * plan.world)
    metrics.update(loop.model_facts)
    if loop.routing is not None:  # the last report's interval, as loss is the last step's
        metrics.update(loop.routing.last)
    return Result(
        uri=published.uri,
        digest=published.digest,
        size_bytes=published.size_bytes,
        version=published.version,
        metrics=metrics,
        progress=ProgressInfo(step=p.step, total=plan.total_steps),
    )


def _by_source(mixture: LossDrivenMixture) -> dict[str, float]:
    """mixture_weight_<source> (the weights in force at the end), source_loss_<source>."""
    metrics = {f"mixture_weight_{name}": w for name, w in mixture.weights.items()}
    return metrics | {f"source_loss_{name}": v for name, v in mixture.losses.items()}


def _partial(plan: Plan, loop: Loop | None, saved: Saved | None) -> Result:
    step = loop.progress.step if loop is not None else (saved.step if saved else None)
    return Result(
        checkpoint=CheckpointInfo(uri=saved.uri, step=saved.step) if saved else None,
        progress=ProgressInfo(step=step, total=plan.total_steps),
    )


def _train(plan: Plan, d: Dist) -> Result:
    store = CheckpointStore(plan.checkpoints, plan.spec.checkpoint.keep_last, d)
    loop: Loop | None = None
    try:
        loop = _build(plan, d, store)
        _resume(plan, loop, store, d)
        loop.run()
        published = _publish(plan, loop, d)
        loop.sink.close()
        # Every rank of a pod writes the same termination log: they must agree on it.
        return d.broadcast(_result(plan, loop, published))
    except BadInputError:
        raise
    except TransientError as exc:
        saved = loop.saved if loop else None
        raise TransientError(exc.reason, exc.message, _partial(plan, loop, saved)) from exc
    except Exception as exc:
        saved = loop.saved if loop else _latest(store)
        reason = "OutOfMemory" if isinstance(exc, torch.OutOfMemoryError) else "TrainingFailed"
        message = f"{type(exc).__name__}: {exc}"
        raise TransientError(reason, message, _partial(plan, loop, saved)) from exc


def _latest(store: CheckpointStore) -> Saved | None:
    try:
        return store.latest()
    except Exception:
        return None
