"""PretrainJob.spec.mixture: how the trainer weighs the dataset's sources over a run.

A DataPipeline's `sources[].weight` fixes the proportions once, when the shards are
written. The loss-driven mixture moves them during pretraining instead: every
`updateIntervalSteps` the trainer compares each source's mean loss over the last
interval with the interval before, and gives more weight to the sources whose loss
fell least (they still have the most to learn), less to those that fell most. A
source's weight multiplies its share of the dataset as packed, so weight 1 for every
source samples the dataset as it is.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from modelsmith.api.common import cel
from modelsmith.api.meta import CamelModel


class MixtureStrategy(StrEnum):
    STATIC = "static"
    LOSS_DRIVEN = "loss-driven"


class Mixture(CamelModel):
    """Per-source sampling weights that adapt to each source's recent loss change."""

    model_config = cel(
        (
            "self.minWeight < self.maxWeight",
            "mixture.minWeight must be below mixture.maxWeight",
            lambda s: s.min_weight < s.max_weight,
        ),
    )

    strategy: MixtureStrategy = Field(
        default=MixtureStrategy.LOSS_DRIVEN,
        description=(
            "loss-driven: every updateIntervalSteps, w <- clip(w * exp(learningRate * g), "
            "minWeight, maxWeight), where g is how much less a source's loss fell over the "
            "last interval than the sources' mean, in standard deviations across sources. "
            "static: sample the dataset as packed (the same as leaving mixture out). "
            "loss-driven needs a dataset with two or more sources (a DataPipeline records "
            "each sequence's source)."
        ),
    )
    learning_rate: float = Field(
        default=0.01,
        gt=0,
        le=10,
        description="Step size of the multiplicative weight update (0.01: about 1% a step).",
    )
    min_weight: float = Field(
        default=0.1,
        gt=0,
        le=1000,
        description="Lowest weight a source can reach: it is never starved of samples.",
    )
    max_weight: float = Field(
        default=2.0,
        gt=0,
        le=1000,
        description=(
            "Highest weight a source can reach. Every source starts at 1 (clipped into "
            "[minWeight, maxWeight])."
        ),
    )
    update_interval_steps: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description=(
            "Optimizer steps per loss measurement: the weights change every this many "
            "steps, from the second interval on."
        ),
    )
