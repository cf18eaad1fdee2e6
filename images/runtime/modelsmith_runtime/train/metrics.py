"""Training metrics to the three places people look: logs, TensorBoard, Prometheus.

Every log interval rank 0 writes one JSON line (the pod log is the one sink that is
always there), adds TensorBoard scalars when tensorboard is installed, and sets
Prometheus gauges when MODELSMITH_METRICS_PORT names a port. MFU is model FLOPs
(6 x active parameters per token plus attention) over the accelerator's dense peak,
which comes from MODELSMITH_PEAK_TFLOPS or a table of common GPUs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from modelsmith_runtime.gauges import Gauges
from modelsmith_runtime.progress import ProgressReporter

log = logging.getLogger("modelsmith_runtime.train.metrics")

PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    # (substring of the CUDA device name, dense bf16/fp16 TFLOPS, fp32 TFLOPS)
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("H20", 148.0, 44.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("V100", 125.0, 15.7),
)
"""Vendor datasheet dense (no sparsity) figures per GPU."""


def peak_flops(device: torch.device, half_precision: bool) -> float | None:
    """FLOP/s of one accelerator at the training precision; None when unknown (CPU)."""
    override = os.environ.get("MODELSMITH_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, full in PEAK_TFLOPS:
        if key in name:
            return (half if half_precision else full) * 1e12
    return None


PROMETHEUS_HELP = {
    "loss": "Language-model loss at the last log interval.",
    "learning_rate": "Learning rate.",
    "tokens_per_second": "Training throughput, all ranks.",
    "mfu": "Model FLOPs utilisation (0..1).",
    "step": "Optimizer steps done.",
    "total_steps": "Optimizer steps in the whole run.",
    # MoE routing over the last log interval (routing.py load_figures).
    "expert_load_std": "Std across experts of their utilisation (1 = even share), mean of "
    "the MoE layers, after the capacity.",
    "routed_load_std": "The same from the router's choices, before the capacity.",
    "dropped_token_fraction": "Routed token slots dropped at an expert's capacity.",
    "trainable_share": "Share of the parameters that train (the rest frozen).",
}

PROMETHEUS_LABELLED = {
    "mixture_weight": (
        "source",
        "Sampling weight in force for a dataset source (loss-driven mixture).",
    ),
    "source_loss": ("source", "A source's mean loss over the last closed mixture interval."),
    "expert_load_fraction": (
        "expert",
        "Share of the routed token slots an expert received (MoE; by expert index, over "
        "all MoE layers, before the capacity).",
    ),
}
"""Gauges with one label: a series per dataset source, or per expert."""
EXPERT_SHARE = "expert_load_fraction_"
"""Flat names (logs, result) of the per-expert shares: the ``expert`` gauge's series."""


class MetricsSink:
    """Rank 0's reporter; on other ranks every method is a no-op."""

    def __init__(self, enabled: bool, tensorboard_dir: Path | None) -> None:
        self.enabled = enabled
        self._tb: Any = None
        self._prom: Gauges | None = None
        self._progress = ProgressReporter()
        if not enabled:
            return
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass  # tensorboard is optional in the image
            else:
                self._tb = SummaryWriter(log_dir=str(tensorboard_dir))
        self._prom = Gauges("modelsmith_train_", PROMETHEUS_HELP, labelled=PROMETHEUS_LABELLED)

    def record(
        self,
        step: int,
        values: dict[str, float],
        by_source: dict[str, dict[str, float]] | None = None,
    ) -> None:
        """``by_source``: per-source values ({"mixture_weight": {"web": 1.2}}), logged
        nested, as train/<name>/<source> scalars and as gauges labelled by source."""
        if not self.enabled:
            return
        log.info("%s", json.dumps({"event": "train", "step": step, **values, **(by_source or {})}))
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"train/{name}", value, step)
            for name, per in (by_source or {}).items():
                for source, value in per.items():
                    self._tb.add_scalar(f"train/{name}/{source}", value, step)
        if self._prom is not None:
            self._prom.set({"step": float(step), **values})
            for name, per in (by_source or {}).items():
                self._prom.set_labelled(name, per)
            shares = {
                name.removeprefix(EXPERT_SHARE): value
                for name, value in values.items()
                if name.startswith(EXPERT_SHARE)
            }
            self._prom.set_labelled("expert_load_fraction", shares)
        total = int(values.get("total_steps", 0)) or None
        self._progress.report(step, total, force=step == total)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
