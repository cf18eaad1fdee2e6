"""Checkpoints a killed pod resumes from exactly: model, optimizer, schedule, data, RNG.

Layout, beside the output (see `plan.CHECKPOINT_SUFFIX`):

    <output>-checkpoints/
      latest                  "step-00000200": the commit point, replaced last
      step-00000100/          torch.distributed.checkpoint (one .distcp per rank),
                              or deepspeed/ (DeepSpeed's ZeRO partitions)
        trainer_state.json    step, data position, tokens, scheduler, scaler, loss
        rng-00000.pt          each rank's RNG states
      step-00000200/

Model and optimizer go through the trainer's `Tensors`. For DDP and FSDP that is
`DcpTensors`: torch.distributed.checkpoint, which writes each rank's shard in
parallel and reshards on load, so the same files serve both and a retry with a
different world size. DeepSpeed writes its own files (deepspeed_engine.py), which
only the same ZeRO stage, precision and world size can read; `Tensors.layout`,
recorded in trainer_state.json, says which kind a step holds, so a run refuses
another's instead of failing on it at every retry.

On a local path (PVC) a checkpoint is written under `.staging-step-…` and renamed
into place; on object storage it is written in place. Either way the `latest`
pointer is written only after every rank has finished, and a reader trusts nothing
else: a pod killed mid-write leaves at worst an orphan directory that the next save
of that step replaces.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from modelsmith_runtime import uris
from modelsmith_runtime.train.distributed import Dist

log = logging.getLogger(__name__)

POINTER = "latest"
STATE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class Saved:
    step: int
    uri: str


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


DCP_LAYOUT: dict[str, Any] = {"format": "torch.distributed.checkpoint"}
"""The layout of checkpoints written before layouts were recorded, too."""


class Tensors(Protocol):
    """Model and optimizer state, written into and read from one step's directory."""

    @property
    def layout(self) -> dict[str, Any]:
        """What a checkpoint's files are; resuming needs an equal one."""
        ...

    def save(self, where: str, store: CheckpointStore) -> None: ...

    def load(self, where: str, store: CheckpointStore) -> None: ...


@dataclass(frozen=True)
class DcpTensors:
    """A plain, DDP or FSDP2 model and its torch optimizer, via torch.distributed.checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    def layout(self) -> dict[str, Any]:
        return DCP_LAYOUT

    def save(self, where: str, store: CheckpointStore) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        writer = (
            dcp.FileSystemWriter(where)
            if store.local
            else dcp.FsspecWriter(store.url(where), **store.options)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "assuming a single process"
            dcp.save(
                {"model": model_sd, "optim": optim_sd},
                storage_writer=writer,
                no_dist=not store.d.enabled,
            )

    def load(self, where: str, store: CheckpointStore) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        app = {"model": model_sd, "optim": optim_sd}
        reader = (
            dcp.FileSystemReader(where)
            if store.local
            else dcp.FsspecReader(store.url(where), **store.options)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(app, storage_reader=reader, no_dist=not store.d.enabled)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=app["model"],
            optim_state_dict=app["optim"],
        )


class CheckpointStore:
    def __init__(self, uri: str, keep_last: int, d: Dist) -> None:
        self.uri = uri.rstrip("/")
        self.keep_last = keep_last
        self.d = d
        self.local = uris.local_path(self.uri)
        self.fs, self.root = uris.open_fs(self.uri)
        self.root = self.root.rstrip("/")
        # DCP builds its own filesystem from a URL: with these options, one like ours.
        self.options = uris.fs_options(self.uri)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, path: str) -> str:
        """A path of ours as the URL torch's fsspec reader and writer take."""
        return str(self.fs.unstrip_protocol(path))

    def latest(self) -> Saved | None:
        """The newest committed checkpoint, or None."""
        pointer = self._path(POINTER)
        if not self.fs.exists(pointer):
            return None
        name = self.fs.cat_file(pointer).decode().strip()
        if not STEP_DIR.match(name) or not self.fs.exists(self._path(name, STATE)):
            log.warning("checkpoint pointer %s names %r, which is incomplete", pointer, name)
            return None
        return Saved(int(name.removeprefix("step-")), f"{self.uri}/{name}")

    def clear(self) -> None:
        """Forget earlier checkpoints (checkpoint.resume: false): older steps of another
        run would otherwise outrank this run's in keep-last pruning."""
        if self.d.is_main and self.fs.exists(self.root):
            for entry in self.fs.ls(self.root, detail=False):
                name = str(entry).rstrip("/").rsplit("/", 1)[-1]
                if name == POINTER or STEP_DIR.match(name) or name.startswith(".staging-"):
                    self.fs.rm(self._path(name), recursive=True)
        self.d.barrier()

    def save(self, step: int, tensors: Tensors, state: dict[str, Any]) -> Saved:
        name = step_name(step)
        target = self._path(name)
        where = self._path(f".staging-{name}") if self.local else target
        if self.d.is_main:
            for path in {where, target}:
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
            self.fs.makedirs(where, exist_ok=True)
        self.d.barrier()
        tensors.save(where, self)
        with self.fs.open(f"{where}/rng-{self.d.rank:05d}.pt", "wb") as handle:
            torch.save(_rng_state(self.d.device), handle)
        self.d.barrier()
        if self.d.is_main:
            self.fs.pipe_file(f"{where}/{STATE}", json.dumps(state, indent=2).encode())
            if self.local:
                Path(where).replace(target)
            self._commit(name)
            self._prune()
        self.d.barrier()
        if self.d.is_main:
            log.info("checkpoint %s saved", f"{self.uri}/{name}")
        return Saved(step, f"{self.uri}/{name}")

    def _commit(self, name: str) -> None:
        pointer = self._path(POINTER)
        if self.local:
            tmp = Path(f"{pointer}.tmp")
            tmp.write_text(name)
            tmp.replace(pointer)
        else:
            self.fs.pipe_file(pointer, name.encode())

    def _prune(self) -> None:
        names = []
        for entry in self.fs.ls(self.root, detail=False):
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if STEP_DIR.match(name):
                names.append(name)
            elif name.startswith(".staging-") and self.local:
                shutil.rmtree(Path(self._path(name)), ignore_errors=True)
        for name in sorted(names)[: -self.keep_last]:
            self.fs.rm(self._path(name), recursive=True)

    def state(self, saved: Saved) -> dict[str, Any]:
        """The trainer state (JSON), readable before any tensor is loaded."""
        raw = self.fs.cat_file(self._path(step_name(saved.step), STATE))
        state: dict[str, Any] = json.loads(raw)
        return state

    def load(self, saved: Saved, tensors: Tensors) -> None:
        """Restore model, optimizer and this rank's RNG states."""
        where = self._path(step_name(saved.step))
        tensors.load(where, self)
        rng = f"{where}/rng-{self.d.rank:05d}.pt"
        if self.fs.exists(rng):
            with self.fs.open(rng, "rb") as handle:
                _set_rng_state(torch.load(handle, weights_only=True), self.d.device)
        else:
            log.warning(
                "no RNG state for rank %d in %s (world size changed)", self.d.rank, saved.uri
            )
