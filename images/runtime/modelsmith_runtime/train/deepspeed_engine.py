"""DeepSpeed ZeRO 1-3 behind the Trainer interface the Loop drives.

The engine owns what DeepSpeed must own: the partitioned optimizer state, gradient
reduction, loss scaling and clipping (`engine.backward`, `engine.step`), the module
converted to bf16/fp16, and its checkpoint files. Everything else is the shared
trainer's: the loss bookkeeping and the NaN check before any weight moves, the
optimizer and schedule of schedule.py (see deepspeed_config.py), the data order,
metrics, the CheckpointStore's commit pointer and trainer_state.json.

The torch process group is the one Dist.start made from torchrun's environment;
`deepspeed.initialize(dist_init_required=False)` wraps it (DeepSpeed's
init_distributed adopts an initialised torch group and creates no second one) and
fails loudly instead of starting one of its own. One rank gets a one-member group
over an in-memory store, because DeepSpeed needs a group even then.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from modelsmith.api.pretrain import Offload, Precision
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.train.checkpoint import CheckpointStore
from modelsmith_runtime.train.deepspeed_config import deepspeed_config, zero_stage
from modelsmith_runtime.train.distributed import Dist
from modelsmith_runtime.train.loop import Trainer
from modelsmith_runtime.train.plan import Plan
from modelsmith_runtime.train.schedule import (
    BETAS,
    build_optimizer,
    build_scheduler,
    parameter_groups,
)

log = logging.getLogger(__name__)

TAG = "deepspeed"
"""The folder inside a step's checkpoint that holds DeepSpeed's files."""


def _import_deepspeed() -> ModuleType:
    try:
        import deepspeed
    except ImportError as exc:
        raise BadInputError(
            "Unsupported",
            f"distribution.strategy deepspeed: DeepSpeed does not import in this image ({exc}); "
            "install modelsmith-runtime[deepspeed]",
        ) from exc
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # our loop logs progress
    module: ModuleType = deepspeed
    return module


def _prepare_accelerator(deepspeed: ModuleType, precision: Precision) -> None:
    """Refuse what the accelerator cannot do, and skip a compile nothing here uses.

    On the CPU accelerator DeepSpeed's communication backend JIT-compiles a
    shared-memory all-reduce (about a minute, and a C++ compiler in the image) that
    only its inference all-reduce calls; training reduces through the torch group.
    Marking the op incompatible is what DeepSpeed does on hosts that cannot build it.
    """
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if precision == Precision.FP16 and not accelerator.is_fp16_supported():
        raise BadInputError(
            "Unsupported",
            f"precision fp16: DeepSpeed does not support fp16 on {accelerator.device_name()}; "
            "use bf16 or fp32",
        )
    if accelerator.device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _process_group(d: Dist) -> None:
    """torchrun's group, or a one-rank group for a run without torchrun, with the
    variables torchrun would have set: DeepSpeed asserts LOCAL_RANK."""
    if dist.is_initialized():
        return
    for name, value in (("RANK", "0"), ("LOCAL_RANK", str(d.local_rank)), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    backend = "nccl" if d.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _cpu_adam_prebuilt() -> bool:
    from deepspeed.git_version_info import installed_ops

    return bool(installed_ops.get("cpu_adam"))


def _optimizer(model: nn.Module, plan: Plan, d: Dist) -> torch.optim.Optimizer:
    """The AdamW of the other strategies, or the same update in DeepSpeedCPUAdam.

    With offload cpu on GPUs the optimizer steps over host copies of the weights, where
    DeepSpeedCPUAdam (SIMD, multi-threaded) is several times faster than torch's
    foreach AdamW. It needs its compiled op, and building that at run time costs every
    new pod about a minute and a compiler, so it is used when the image was built with
    it (DS_BUILD_CPU_ADAM=1) and torch's AdamW otherwise. On the CPU (the tests) the
    weights already live in host memory and torch's AdamW keeps runs comparable with
    the other strategies. Without offload, torch's fused AdamW is one kernel per step
    on the GPU, as fast as DeepSpeed's FusedAdam and with no op to compile.
    """
    t = plan.spec.training
    offload = plan.spec.distribution.offload == Offload.CPU
    if offload and d.device.type == "cuda":
        if _cpu_adam_prebuilt():
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            groups = parameter_groups(model, t)
            adam: torch.optim.Optimizer = DeepSpeedCPUAdam(
                groups, lr=t.learning_rate, betas=BETAS, adamw_mode=True
            )
            return adam
        if d.is_main:
            log.warning(
                "offload cpu: DeepSpeedCPUAdam is not built into this image "
                "(DS_BUILD_CPU_ADAM=1); stepping torch's AdamW in host memory, which is slower"
            )
    return build_optimizer(model, t, on_host=offload)


def deepspeed_trainer(model: nn.Module, plan: Plan, d: Dist, *, aux_coef: float) -> Trainer:
    spec = plan.spec
    deepspeed = _import_deepspeed()
    _prepare_accelerator(deepspeed, spec.precision)
    _process_group(d)
    optimizer = _optimizer(model, plan, d)
    t = spec.training
    scheduler = build_scheduler(optimizer, t.schedule, plan.warmup_steps, plan.total_steps)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(plan, d.device.type),
        dist_init_required=False,
    )
    layout = {
        "format": "deepspeed",
        "zeroStage": zero_stage(spec.distribution),
        "precision": str(spec.precision),
        "world": d.world,  # ZeRO partitions are per rank: no resharding on load
    }
    return DeepSpeedTrainer(
        engine, optimizer, scheduler, d, grad_clip=t.grad_clip, aux_coef=aux_coef, layout=layout
    )


@dataclass(frozen=True)
class DeepSpeedTensors:
    """The engine's own checkpoint (module, ZeRO partitions, loss scaler) in `TAG`/.

    DeepSpeed writes with torch.save to a filesystem path, so on object storage each
    rank writes to a local folder and uploads its files; on load every rank fetches
    the whole folder (ZeRO-1/2 read every rank's partition file)."""

    engine: Any
    layout: dict[str, Any]

    def save(self, where: str, store: CheckpointStore) -> None:
        if store.local:
            self.engine.save_checkpoint(where, tag=TAG, save_latest=False)
            return
        with tempfile.TemporaryDirectory(prefix="deepspeed-") as folder:
            self.engine.save_checkpoint(folder, tag=TAG, save_latest=False)
            for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                remote = f"{where}/{path.relative_to(folder).as_posix()}"
                store.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)  # no-op on buckets
                store.fs.put_file(str(path), remote)

    def load(self, where: str, store: CheckpointStore) -> None:
        if store.local:
            self._load(where)
            return
        with tempfile.TemporaryDirectory(prefix="deepspeed-") as folder:
            for remote in store.fs.find(f"{where}/{TAG}"):
                local = Path(folder, TAG, str(remote).rsplit(f"/{TAG}/", 1)[-1])
                local.parent.mkdir(parents=True, exist_ok=True)
                store.fs.get_file(remote, str(local))
            self._load(folder)

    def _load(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(
            folder, tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder}/{TAG}")


class DeepSpeedTrainer(Trainer):
    def __init__(
        self,
        engine: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        d: Dist,
        *,
        grad_clip: float,
        aux_coef: float,
        layout: dict[str, Any],
    ) -> None:
        # No autocast and no GradScaler: the engine converted the module to the
        # training precision and scales fp16 losses itself.
        super().__init__(
            engine, optimizer, scheduler, d, autocast=None, grad_clip=grad_clip, aux_coef=aux_coef
        )
        self.engine = engine
        self.stage = int(layout["zeroStage"])
        self.tensors = DeepSpeedTensors(engine, layout)

    def _micro_step(self, ids: torch.Tensor, n: int, last: bool) -> Any:
        """`engine.backward` divides by gradient_accumulation_steps (= n) itself and
        reduces gradients on the last micro-batch. `engine.step` must follow every
        backward, but it steps the optimizer only at the accumulation boundary, so the
        last call waits in `_optimizer_step` until the loss has been found finite."""
        out = self.engine(input_ids=ids, labels=ids, use_cache=False)
        self.engine.backward(out.loss)
        if not last:
            self.engine.step()
        return out

    def _optimizer_step(self) -> float | None:
        self.engine.step()
        self.scheduler.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        module: nn.Module = self.engine.module
        if self.stage < 3:  # ZeRO-1/2 keep whole, current weights on every rank
            if not self.d.is_main:
                return {}
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        return _gather_partitioned(module, self.d.is_main)


def _gather_partitioned(module: nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """ZeRO-3 keeps a 1/world slice of each weight per rank: gather the weights one
    module at a time (a collective every rank joins), so no device ever holds more
    than one layer's full weights, and rank 0 copies each into host memory."""
    from deepspeed.runtime.zero import GatheredParameters

    full: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules():
        own = list(sub.named_parameters(recurse=False))
        if not own:
            continue
        with GatheredParameters([p for _, p in own], modifier_rank=None):
            if main:
                for name, param in own:
                    full[f"{prefix}.{name}" if prefix else name] = param.detach().to(
                        "cpu", copy=True
                    )
    if main:
        keys = module.state_dict().keys()
        for name, buffer in module.named_buffers():
            if name in keys:
                full[name] = buffer.detach().to("cpu", copy=True)
    return full
