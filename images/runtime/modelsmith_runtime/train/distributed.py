"""The process group torchrun set up, and the data-parallel wrapper around the model.

torchrun exports RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single
process with no process group at all, which is what the CPU tests and a one-GPU pod
use. NCCL on GPUs, gloo on the CPU: both DDP and FSDP2 (`fully_shard`) run on gloo,
which is how the workload tests exercise the multi-rank paths without a GPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.nn.parallel import DistributedDataParallel

from modelsmith.api.pretrain import Offload, Strategy

log = logging.getLogger(__name__)

T = TypeVar("T")

TIMEOUT = timedelta(minutes=int(os.environ.get("MODELSMITH_DIST_TIMEOUT_MINUTES", "30")))
"""Long enough for rank 0 to write a large checkpoint while the others wait."""


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls) -> Dist:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
        return cls(rank, world, local_rank, device)

    def stop(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """One small all-reduce; also how every rank learns another rank's verdict."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def broadcast(self, value: T) -> T:
        """Rank 0's value on every rank (picklable objects)."""
        if not self.enabled:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        result: T = box[0]
        return result


def wrap(
    model: nn.Module,
    strategy: Strategy,
    offload: Offload,
    d: Dist,
    half: torch.dtype | None = None,
) -> nn.Module:
    """DDP replicates the model; FSDP2 shards parameters, gradients and optimizer state
    per decoder layer (ZeRO-3), optionally keeping them in host memory.

    Under FSDP2 a bf16/fp16 run all-gathers its parameters in ``half`` (half the
    traffic of fp32) and reduce-scatters gradients in fp32, as torchtitan does; the
    fp32 master copy stays sharded.
    """
    if not d.enabled:
        if strategy == Strategy.FSDP:
            log.info("one rank: nothing to shard, training the plain model")
        return model
    if strategy == Strategy.DDP:
        device_ids = [d.device.index] if d.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    mesh = init_device_mesh(d.device.type, (d.world,))
    policy = OffloadPolicy()
    if offload == Offload.CPU:
        if d.device.type == "cuda":
            policy = CPUOffloadPolicy()  # pinned host memory, streamed to the GPU per layer
        elif d.is_main:
            log.info("offload cpu: the model already lives in host memory")
    mp = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32 if half else None)
    decoder = getattr(model, "model", None)
    for layer in getattr(decoder, "layers", []):
        fully_shard(layer, mesh=mesh, offload_policy=policy, mp_policy=mp)
    fully_shard(model, mesh=mesh, offload_policy=policy, mp_policy=mp)
    return model
