"""Freeze: the parameters a training run keeps fixed (incremental training).

Its own module so that FineTune and PretrainJob share one definition (one field, one
meaning) without either spec module importing the other.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from modelsmith.api.common import cel
from modelsmith.api.meta import CamelModel

ModuleName = Annotated[str, Field(min_length=1, max_length=256)]


class Freeze(CamelModel):
    """Parameters that stay bit-identical through training; the rest train."""

    model_config = cel(
        (
            "has(self.layers) || has(self.modules)",
            "freeze needs layers or modules",
            lambda s: s.layers is not None or s.modules is not None,
        ),
    )

    layers: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Freeze the input side of the model: every embedding table (token "
        "embeddings, and learned position embeddings where the architecture has them) "
        "and decoder layers 0..layers-1, counted from the input. The final norm and the "
        "output head keep training, except where the output head shares its matrix with "
        "the token embeddings (tied embeddings): then that matrix stays frozen too. 0 "
        "freezes the embeddings alone; more layers than the model has is an error.",
    )
    modules: list[ModuleName] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Freeze these modules, matched as peft matches targetModules: a name "
        "is a full module path (model.embed_tokens, lm_head, model.layers.3) or its last "
        "part(s) (q_proj freezes every q_proj; mlp.down_proj every such pair). A name "
        "that matches no module is an error.",
    )
