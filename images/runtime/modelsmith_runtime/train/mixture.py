"""The loss-driven data mixture: per-source weights that follow each source's progress.

Every step the trainer measures the language-model loss of each sequence and sums it
per source across all ranks (one all-reduce, the step's own). Every
``updateIntervalSteps`` the mean loss of each source over that interval is compared
with its mean over the interval before: the fall f_s. A source whose loss fell least
still has most to learn, so

    g_s = (mean_t f_t - f_s) / std_t f_t        (0 when every source fell alike)
    w_s <- clip(w_s * exp(learningRate * g_s), minWeight, maxWeight)

over the sources seen in both intervals; a source not sampled in one keeps its
weight. The multiplicative (exponentiated-gradient) form keeps weights positive and
makes a step a fixed ratio, 1% at learningRate 0.01, whatever the loss scale;
standardising g does the same across sources and runs. The weights need no
normalisation: a source's chance per sequence is w_s x its share of the dataset.

Every rank computes the update from the same all-reduced sums in float64, so all
agree without a broadcast. The whole state, weights, per-source positions, the
open interval's sums and the last interval's means, is plain JSON in each checkpoint
(Python floats round-trip exactly), so a resumed run continues with bit-identical
weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelsmith.api.mixture import Mixture, MixtureStrategy
from modelsmith.api.pretrain import PretrainJobSpec
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.train.data import MixtureBatches

MIXTURE_REPORT = "mixture.json"
"""In the published model: the mixture's settings and its weights over time."""

log = logging.getLogger(__name__)


def sequence_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each sequence's mean next-token loss, as the model's own loss averages them."""
    with torch.no_grad():
        shifted = logits[:, :-1].float()
        flat = nn.functional.cross_entropy(
            shifted.reshape(-1, shifted.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        return flat.view(ids.shape[0], -1).mean(dim=1)


@dataclass
class MixtureState:
    weights: list[float]
    positions: list[int]
    """Windows of each source consumed so far (its stream position)."""
    window_sum: list[float]
    window_count: list[int]
    previous: list[float | None]
    """Each source's mean loss over the last closed interval."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """{"step", "weights", "loss", "sampled"} after every update: the weights over time,
    the interval's mean loss and the sequences drawn so far, per source."""

    @classmethod
    def fresh(cls, sources: int, spec: Mixture) -> MixtureState:
        start = min(max(1.0, spec.min_weight), spec.max_weight)
        weights = [start] * sources
        return cls(
            weights,
            [0] * sources,
            [0.0] * sources,
            [0] * sources,
            [None] * sources,
            [
                {
                    "step": 0,
                    "weights": list(weights),
                    "loss": [None] * sources,
                    "sampled": [0] * sources,
                }
            ],
        )


def update(weights: list[float], falls: dict[int, float], spec: Mixture) -> list[float]:
    """The new weights, given the loss fall of the sources measured in both intervals."""
    if len(falls) < 2:
        return list(weights)
    mean = sum(falls.values()) / len(falls)
    std = math.sqrt(sum((f - mean) ** 2 for f in falls.values()) / len(falls))
    if std == 0.0:
        return list(weights)
    new = list(weights)
    for source, fall in falls.items():
        step = math.exp(spec.learning_rate * (mean - fall) / std)
        new[source] = min(max(weights[source] * step, spec.min_weight), spec.max_weight)
    return new


class LossDrivenMixture:
    """Draws each step's batch by the weights in force and moves them every interval."""

    def __init__(self, spec: Mixture, batches: MixtureBatches) -> None:
        sampled = [n for n, size in zip(batches.names, batches.sizes, strict=True) if size]
        if len(sampled) < 2:
            raise BadInputError(
                "InvalidSpec",
                f"mixture.strategy loss-driven needs a dataset of two or more sources; this "
                f"one has {len(batches.names)} ({', '.join(batches.names)}) with whole "
                f"windows in {len(sampled)}: pack it with several DataPipeline sources, "
                "or leave mixture out",
            )
        self.spec = spec
        self.batches = batches
        self.names = batches.names
        self.state = MixtureState.fresh(len(self.names), spec)

    @property
    def sources(self) -> int:
        return len(self.names)

    def step(self, step: int) -> tuple[list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]]]:
        """Step ``step`` (0-based): this rank's token micro-batches and their sources."""
        micro, self.state.positions = self.batches.step(
            step, self.state.weights, self.state.positions
        )
        return [tokens for tokens, _ in micro], [sources for _, sources in micro]

    def observe(self, step: int, sums: list[float], counts: list[float]) -> bool:
        """Step ``step`` (1-based, just done) measured these per-source loss sums over
        so many sequences; True when the weights changed hands (an interval closed)."""
        s = self.state
        for i in range(self.sources):
            s.window_sum[i] += sums[i]
            s.window_count[i] += int(counts[i])
        if step % self.spec.update_interval_steps:
            return False
        current = [
            total / count if count else None
            for total, count in zip(s.window_sum, s.window_count, strict=True)
        ]
        falls = {}
        for i, (before, now) in enumerate(zip(s.previous, current, strict=True)):
            if before is not None and now is not None:
                falls[i] = before - now
        s.weights = update(s.weights, falls, self.spec)
        s.previous = [
            now if now is not None else before
            for before, now in zip(s.previous, current, strict=True)
        ]
        s.window_sum, s.window_count = [0.0] * self.sources, [0] * self.sources
        entry = {"step": step, "weights": list(s.weights), "loss": current}
        s.history.append(entry | {"sampled": list(s.positions)})
        return True

    def by_name(self, values: list[float]) -> dict[str, float]:
        return dict(zip(self.names, values, strict=True))

    @property
    def weights(self) -> dict[str, float]:
        return self.by_name(self.state.weights)

    @property
    def losses(self) -> dict[str, float]:
        """Each source's mean loss over the last closed interval (those measured)."""
        return {n: v for n, v in zip(self.names, self.state.previous, strict=True) if v is not None}

    def state_dict(self) -> dict[str, Any]:
        return {"sources": list(self.names), **asdict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("sources", [])) != list(self.names):
            raise BadInputError(
                "CheckpointMismatch",
                f"the checkpoint's mixture is over sources {state.get('sources')}, this "
                f"dataset's are {list(self.names)}; set checkpoint.resume: false to start over",
            )
        fields = {k: state[k] for k in MixtureState.__dataclass_fields__}
        self.state = MixtureState(**fields)

    def report(self) -> dict[str, Any]:
        """What the published model's mixture.json says: settings and weights over time."""
        return {
            "strategy": self.spec.strategy.value,
            "learningRate": self.spec.learning_rate,
            "minWeight": self.spec.min_weight,
            "maxWeight": self.spec.max_weight,
            "updateIntervalSteps": self.spec.update_interval_steps,
            "sources": list(self.names),
            "windows": self.batches.sizes,
            "sampled": self.state.positions,
            "weights": self.weights,
            "history": self.state.history,
        }


def build_mixture(
    spec: PretrainJobSpec, dataset: Path, sequence_length: int, rank: int, world: int
) -> LossDrivenMixture | None:
    """The run's loss-driven mixture; None for a static one (the dataset as packed)."""
    if spec.mixture is None or spec.mixture.strategy is MixtureStrategy.STATIC:
        return None
    batches = MixtureBatches.for_rank(dataset, sequence_length, spec.training, rank, world)
    return LossDrivenMixture(spec.mixture, batches)
