"""`modelsmith-runtime finetune`: check the spec and the inputs cheaply, then fine-tune.

`check` is the cheap half (task config, spec, base model artifact, every dataset line);
torch, transformers and peft are imported only after it passed, so bad input fails
in about a second. The run publishes the model or the adapter atomically and reports
eval loss on the held-out split before and after training, the share of parameters
that trained, and for distillation the teacher's eval loss on the same split.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from modelsmith.api.finetune import DatasetFormat, FineTuneSpec
from modelsmith.api.pretrain import Precision
from modelsmith.contract import ProgressInfo, Result
from modelsmith_runtime.chattemplate import DEFAULT_CHAT_TEMPLATE
from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.finetune.plan import Plan, make_plan
from modelsmith_runtime.task import load_task

if TYPE_CHECKING:  # torch-heavy modules, imported only once the cheap checks passed
    import torch

    from modelsmith_runtime.finetune.distill import DistillLoss
    from modelsmith_runtime.finetune.loop import Loop, Outcome
    from modelsmith_runtime.finetune.tokens import Tokenized

log = logging.getLogger(__name__)


def check(task_config: Path) -> Plan:
    return make_plan(load_task(task_config, FineTuneSpec))


def run(task_config: Path) -> Result:
    return finetune(check(task_config))


def _max_positions(plan: Plan) -> int | None:
    import json

    config = json.loads((plan.base_dir / "config.json").read_text())
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def _train(loop: Loop, train: list[Tokenized], held_out: list[Tokenized]) -> Outcome:
    """The loop, with its failures sorted: out of memory and the unexpected may pass on
    a retry, bad input (a NaN loss) will not."""
    import torch

    try:
        return loop.run(train, held_out)
    except BadInputError:
        raise
    except torch.OutOfMemoryError as exc:
        raise TransientError("OutOfMemory", str(exc)) from exc
    except Exception as exc:
        raise TransientError("TrainingFailed", f"{type(exc).__name__}: {exc}") from exc


def _teacher(plan: Plan, device: torch.device) -> DistillLoss | None:
    """method distill: the loss with its teacher (None for the other methods)."""
    import torch

    from modelsmith_runtime.finetune import distill
    from modelsmith_runtime.finetune.model import DTYPES

    if plan.teacher is None or plan.spec.distill is None:
        return None
    dtype = DTYPES[plan.spec.precision] if device.type == "cuda" else torch.float32
    return distill.objective(plan.teacher.dir, plan.spec.distill, plan.teacher.vocab, device, dtype)


def finetune(plan: Plan) -> Result:

    from modelsmith_runtime import hfmodel, storage
    from modelsmith_runtime.finetune import model as ftmodel
    from modelsmith_runtime.finetune.loop import Loop, split
    from modelsmith_runtime.finetune.tokens import tokenize_all

    hfmodel.quiet_transformers()
    spec, hp = plan.spec, plan.spec.hyperparameters
    device = hfmodel.pick_device()
    if spec.resources.gpus and device.type == "cpu":
        log.warning("resources.gpus is %d but no CUDA device is visible", spec.resources.gpus)
    tokenizer = hfmodel.load_tokenizer(plan.base_dir)
    if spec.format == DatasetFormat.CHAT and not tokenizer.chat_template:
        # Published with the model: the server then renders prompts as it learned them.
        log.info("the base model has no chat template; using modelsmith's default one")
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    length = min(hp.sequence_length, _max_positions(plan) or hp.sequence_length)
    train, held_out = split(tokenize_all(tokenizer, plan.examples, length), spec.eval_split)
    log.info(
        "%s fine-tuning on %s: %d train, %d eval examples, %d tokens max",
        spec.method.value,
        device,
        len(train),
        len(held_out),
        length,
    )
    model = ftmodel.build(plan, device)
    trains, parameters = ftmodel.trainable(model)
    autocast = None if spec.precision == Precision.FP32 else ftmodel.DTYPES[spec.precision]
    teacher = _teacher(plan, device)
    loop = Loop(
        model, hp, pad_id=tokenizer.pad_token_id, device=device, autocast=autocast, loss=teacher
    )
    try:
        outcome = _train(loop, train, held_out)
        meta = {
            "kind": "FineTune",
            "method": spec.method.value,
            "merged": plan.merged,
            "baseModel": {"uri": plan.base_uri, "digest": plan.base_digest},
        }
        teacher_loss = None
        if teacher is not None and plan.teacher is not None:
            meta["teacher"] = {"uri": plan.teacher.uri, "digest": plan.teacher.digest}
            teacher_loss = loop.evaluate(held_out, teacher.teacher) if held_out else None
        with storage.publish(plan.output, meta, producer=plan.producer, version=spec.version) as (
            staging,
            published,
        ):
            ftmodel.export(plan, model, tokenizer, staging, device)
    finally:
        loop.gauges.close()
    metrics = {
        "train_loss": outcome.train_loss,
        "steps": float(outcome.steps),
        "train_examples": float(len(train)),
        "eval_examples": float(len(held_out)),
        "trainable_parameters": float(trains),
        "trainable_share": trains / parameters,
    }
    if outcome.eval_loss is not None and outcome.eval_loss_before is not None:
        metrics["eval_loss_before"] = outcome.eval_loss_before
        metrics["eval_loss"] = outcome.eval_loss
        metrics["eval_perplexity"] = math.exp(min(outcome.eval_loss, 50.0))
        if teacher_loss is not None:
            metrics["teacher_eval_loss"] = teacher_loss
            metrics["distill_gap"] = outcome.eval_loss - teacher_loss
    return Result(
        uri=published.uri,
        digest=published.digest,
        size_bytes=published.size_bytes,
        version=published.version,
        metrics=metrics,
        progress=ProgressInfo(step=outcome.steps, total=outcome.steps),
    )
