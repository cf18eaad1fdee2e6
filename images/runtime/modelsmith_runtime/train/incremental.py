"""Continued pretraining: start from a published model's weights, keep some of them fixed.

`spec.initFrom` is checked against the spec's architecture before torch is imported
(config.json alone says whether the weights fit), so a mismatch fails with exit 2 in
about a second and names every differing field in the spec's words. The weights are
then loaded with transformers' `from_pretrained`, which undoes any layout conversion
the checkpoint was saved with (Mixtral's per-expert tensors, for one), and a missing
or unexpected tensor is refused rather than left at its random init.

`spec.freeze` is modelsmith_runtime.freeze's, shared with FineTune, applied before
the data-parallel wrapper and the optimizer see the model. Checkpoints hold every
weight, frozen ones too, so a resume restores them like the rest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.api.pretrain import Architecture, ArchitectureType
from modelsmith_runtime.errors import BadInputError

if TYPE_CHECKING:
    from torch import nn

MLP_MULTIPLE = 64
MIXTRAL_TOP_K = 2
"""transformers' MixtralConfig default for num_experts_per_tok."""


def default_intermediate(hidden: int) -> int:
    """Llama's 8/3 x hidden for a SwiGLU MLP, rounded up to a multiple of 64."""
    return math.ceil(8 * hidden / 3 / MLP_MULTIPLE) * MLP_MULTIPLE


def architecture_fields(arch: Architecture, vocab_size: int) -> dict[str, tuple[str, Any]]:
    """Each architecture field as its spec name -> (config.json key, value)."""
    fields: dict[str, tuple[str, Any]] = {
        "type": ("model_type", "mixtral" if arch.type == ArchitectureType.MOE else "llama"),
        "layers": ("num_hidden_layers", arch.layers),
        "hiddenSize": ("hidden_size", arch.hidden_size),
        "heads": ("num_attention_heads", arch.heads),
        "kvHeads": ("num_key_value_heads", arch.kv_heads or arch.heads),
        "intermediateSize": (
            "intermediate_size",
            arch.intermediate_size or default_intermediate(arch.hidden_size),
        ),
        "vocabSize": ("vocab_size", vocab_size),
    }
    if arch.type == ArchitectureType.MOE:
        fields["experts"] = ("num_local_experts", arch.experts)
        fields["topK"] = ("num_experts_per_tok", arch.top_k or MIXTRAL_TOP_K)
    return fields


def read_config(model_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    return config


def check_architecture(config: dict[str, Any], arch: Architecture, vocab_size: int) -> None:
    """Refuse a model whose config.json differs from the spec, naming every difference."""
    differ = []
    for name, (key, want) in architecture_fields(arch, vocab_size).items():
        have = config.get(key)
        if key == "num_key_value_heads" and have is None:
            have = config.get("num_attention_heads")
        if have != want:
            differ.append(f"architecture.{name} is {want}, the model's {key} is {have}")
    if config.get("tie_word_embeddings", False):
        differ.append("the model ties its input and output embeddings; PretrainJob trains untied")
    if differ:
        raise BadInputError(
            "ArchitectureMismatch",
            "initFrom does not match spec.architecture: " + "; ".join(differ),
        )


def load_model(cls: Any, config: Any, model_dir: Path) -> nn.Module:
    """A Hugging Face model's weights in fp32 master precision, in host memory, built
    from our ``config`` (which check_architecture found equal where it matters)."""
    import torch

    try:
        model, info = cls.from_pretrained(
            str(model_dir), config=config, dtype=torch.float32, output_loading_info=True
        )
    except Exception as exc:  # transformers raises anything from OSError to KeyError
        raise BadInputError("InvalidModel", f"initFrom {model_dir}: {exc}") from exc
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise BadInputError(
            "InvalidModel", f"initFrom {model_dir}: its weights do not fit the model: {bad}"
        )
    loaded: nn.Module = model
    return loaded
