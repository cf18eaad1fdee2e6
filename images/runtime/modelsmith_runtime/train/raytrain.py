"""`distribution.launcher: ray`: the torchrun ranks' own training, started by Ray Train.

The run's pods form a Ray cluster (raycluster.py) and this driver, on pod 0, asks Ray
Train for one worker per GPU (distribution.nodes x resources.gpus). Ray Train sets up
the process group and RANK/WORLD_SIZE/LOCAL_RANK, and each worker runs `session.train`,
the very function a torchrun rank runs: the same data split, checkpoints on shared
storage, exact resume, metrics and publishing. Ray Train's own checkpointing and retries
stay off: the CheckpointStore already resumes exactly, and the Kubernetes Job owns
retries, so a failed attempt ends this process with the contract's exit code like any
other.

Results and errors cross the Ray boundary by value: rank 0's contract Result is the
training function's return value, and a rank's BadInputError or TransientError travels
inside a `RankError`, which adds when it happened: when one rank fails, the others
fail next in their collectives, and only the first failure says why.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from modelsmith.contract import CheckpointInfo, ProgressInfo, Result
from modelsmith_runtime import raycluster
from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.train.plan import Plan, check_spec

log = logging.getLogger(__name__)

DRIVER_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
"""Set before Ray is imported, which is when it reads them. Train v2 is the API this
module speaks (the rank-0 return value, `WorkerGroupError.worker_failures`). The next
two let the workers' lines reach this process's streams as they were written, one JSON
object each, without Ray's "(RayTrainWorker pid=…)" prefix or its folding of repeated
lines. The preemption watcher follows Ray autoscaler node drains, which this cluster
never has (Kubernetes evicts the pods instead): one actor process less to start."""


class RankError(Exception):
    """A rank's BadInputError or TransientError and when it was raised."""

    def __init__(self, error: BadInputError | TransientError, at: float) -> None:
        super().__init__(error, at)
        self.error = error
        self.at = at

    def __str__(self) -> str:
        return f"{self.error.reason}: {self.error.message}"


def _log_json() -> None:
    """Ray starts the worker process, so the cli's JSON logging is not set up there."""
    from modelsmith_runtime.cli import JsonFormatter

    logger = logging.getLogger("modelsmith_runtime")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("MODELSMITH_LOG_LEVEL", "INFO"))
    logger.propagate = False


def train_rank(config: dict[str, str]) -> Result:
    """One Ray Train worker: what one torchrun rank runs.

    Ray Train has initialised torch.distributed already (Dist.start reuses it) and
    exports RANK, WORLD_SIZE and LOCAL_RANK; they are set again from its context
    because the plan, the data split and the logs all read them. Each worker builds
    its own plan, as each torchrun rank does: the task config is at the same path in
    every pod of the Job, and a remote dataset is fetched onto the worker's own node.
    """
    import ray.train

    context = ray.train.get_context()
    os.environ["RANK"] = str(context.get_world_rank())
    os.environ["WORLD_SIZE"] = str(context.get_world_size())
    os.environ["LOCAL_RANK"] = str(context.get_local_rank())
    _log_json()
    from modelsmith_runtime.train.main import check
    from modelsmith_runtime.train.session import train

    try:
        return train(check(Path(config["task_config"])))
    except (BadInputError, TransientError) as exc:
        raise RankError(exc, time.time()) from exc


def _scaling(ray: Any, workers: int) -> Any:
    """One worker per GPU when the cluster has GPUs; on CPUs, at most one core each,
    fewer when the cluster is smaller, so the workers always fit (tests, a laptop)."""
    from ray.train import ScalingConfig

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        if gpus < workers:
            raise TransientError(
                "RayResourcesMissing", f"{workers} Ray Train workers need a GPU each, {gpus} joined"
            )
        return ScalingConfig(num_workers=workers, use_gpu=True)
    cpus = min(1.0, math.floor(float(resources.get("CPU", 0)) / workers * 100) / 100)
    return ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus})


def _run_config(scratch: str) -> Any:
    """Ray's own run bookkeeping goes to scratch, never beside the model, and Ray Train
    retries nothing (worker failures, preemptions, its controller): the Job retries the
    pod, and the retry resumes from the CheckpointStore."""
    from ray.train import FailureConfig, RunConfig

    retries = FailureConfig(max_failures=0, max_preemption_failures=0, controller_failure_limit=0)
    return RunConfig(name="pretrain", storage_path=scratch, failure_config=retries)


def _trainer_class() -> Any:
    """TorchTrainer without Ray Train's placement-group cleaner, a detached actor that
    removes the workers' placement group should the controller die. Here the whole Ray
    cluster dies with the run's pods, so nothing can outlive it; and the cleaner asks
    Ray's state API, which needs the dashboard our heads run without, so it would log a
    warning every second of a days-long run. (Ray 2.60 has no switch for it: a private
    hook, matched by name so that a Ray without it only brings the warnings back.)"""
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks: list[Any] = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return Trainer


def _stored(plan: Plan) -> Result:
    """Where a retry resumes, from the checkpoint store itself: a worker that was
    killed (OOM, a lost node) could not say."""
    import torch

    from modelsmith_runtime.train.checkpoint import CheckpointStore
    from modelsmith_runtime.train.distributed import Dist

    reader = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    try:
        saved = CheckpointStore(plan.checkpoints, plan.spec.checkpoint.keep_last, reader).latest()
    except Exception as exc:
        log.warning("could not read the checkpoint store %s: %s", plan.checkpoints, exc)
        saved = None
    if saved is None:
        return Result(progress=ProgressInfo(total=plan.total_steps))
    return Result(
        checkpoint=CheckpointInfo(uri=saved.uri, step=saved.step),
        progress=ProgressInfo(step=saved.step, total=plan.total_steps),
    )


def _newest(reported: Result | None, stored: Result) -> Result:
    """A rank's own report, with the store's checkpoint when that is newer: a rank can
    die between the commit of a checkpoint and noting it, and the store is the truth."""
    if reported is None:
        return stored
    mine, theirs = reported.checkpoint, stored.checkpoint
    if theirs is not None and (mine is None or theirs.step > mine.step):
        return reported.model_copy(update={"checkpoint": theirs})
    return reported


def failure(error: BaseException, plan: Plan) -> BadInputError | TransientError:
    """The contract error for a failed `fit`: bad input on any rank wins (exit 2);
    otherwise a retryable error whose cause is a worker Ray lost (its survivors' errors
    are echoes) or else the earliest rank failure, carrying the newest checkpoint and
    progress."""
    failures: dict[int, BaseException] = getattr(error, "worker_failures", None) or {}
    ranks = sorted((f for f in failures.values() if isinstance(f, RankError)), key=lambda f: f.at)
    bad = [f.error for f in ranks if isinstance(f.error, BadInputError)]
    if bad:
        return bad[0]
    crossed = [f.error for f in ranks if isinstance(f.error, TransientError)]
    partial = _newest(next((e.partial for e in crossed if e.partial), None), _stored(plan))
    lost = sorted((rank, f) for rank, f in failures.items() if not isinstance(f, RankError))
    if lost:
        rank, cause = lost[0]
        cause = getattr(cause, "health_check_failure", None) or cause  # why Ray lost it
        message = f"Ray Train worker {rank}: {type(cause).__name__}: {cause}"
        return TransientError("RayWorkerFailed", message, partial)
    if crossed:
        return TransientError(crossed[0].reason, crossed[0].message, partial)
    cause = getattr(error, "controller_failure", None) or error
    return TransientError("RayTrainFailed", f"{type(cause).__name__}: {cause}", partial)


def run(task_config: Path, plan: Plan) -> Result:
    """Train on the Ray cluster; rank 0's Result, or the contract error of the attempt."""
    d = plan.spec.distribution
    workers = d.nodes * max(plan.spec.resources.gpus, 1)  # gpus 0: one CPU worker per node
    check_spec(plan.spec, workers)  # the batch split over Ray's workers, before Ray starts
    for name, value in DRIVER_ENV.items():
        os.environ[name] = value
    with raycluster.connect() as ray, tempfile.TemporaryDirectory(prefix="ray-train-") as scratch:
        trainer = _trainer_class()(
            train_rank,
            train_loop_config={"task_config": str(task_config.resolve())},
            scaling_config=_scaling(ray, workers),
            run_config=_run_config(scratch),
        )
        log.info("Ray Train: %d workers", workers)
        try:
            done = trainer.fit()
        except Exception as exc:
            raise failure(exc, plan) from exc
    result = done.return_value
    if not isinstance(result, Result):
        raise TransientError("RayTrainFailed", f"rank 0 returned {result!r}, not a Result")
    return result
