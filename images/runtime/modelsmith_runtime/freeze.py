"""spec.freeze: which parameters of a model stay fixed through training.

Shared by the training workloads so that `freeze` means one thing (see
modelsmith.api.freeze for the user's words). Frozen parameters get requires_grad
False, so no optimizer ever holds them: no update, no weight decay, and so they come
out bit-identical (in the dtype they were loaded in).

The decoder layers are found as the model's ModuleList whose length is the config's
num_hidden_layers (model.layers in Llama, Qwen, Mistral; transformer.h in GPT-2), so
any transformers causal LM works without a table of architectures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from modelsmith.api.freeze import Freeze
from modelsmith_runtime.errors import BadInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frozen:
    names: tuple[str, ...]
    """The frozen parameters, by name."""
    parameters: int
    """How many numbers they hold."""


def decoder_layers(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """(its module path, the list) of the model's decoder layers."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    count = getattr(config or model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise BadInputError(
        "InvalidModel",
        f"cannot find the decoder layers of this {type(model).__name__} "
        f"(no module list of num_hidden_layers={count} layers)",
    )


def matches(module_name: str, name: str) -> bool:
    """peft's rule for targetModules: the full path, or its last dotted part(s)."""
    return module_name == name or module_name.endswith("." + name)


def _prefixes(model: Any, freeze: Freeze, field: str) -> list[str]:
    prefixes: list[str] = []
    if freeze.layers is not None:
        path, layers = decoder_layers(model)
        if freeze.layers > len(layers):
            raise BadInputError(
                "InvalidSpec",
                f"{field}.layers: {freeze.layers}, but the model has {len(layers)} decoder layers",
            )
        prefixes += [f"{path}.{i}." for i in range(freeze.layers)]
        prefixes += [
            f"{name}."
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Embedding) and not name.startswith(f"{path}.")
        ]
    names = [name for name, _ in model.named_modules() if name]
    for wanted in freeze.modules or []:
        found = [name for name in names if matches(name, wanted)]
        if not found:
            raise BadInputError(
                "InvalidSpec", f"{field}.modules: {wanted!r} matches no module of the model"
            )
        prefixes += [f"{name}." for name in found]
    return prefixes


def apply(model: Any, freeze: Freeze, field: str = "freeze") -> Frozen:
    """Freeze what ``freeze`` names; BadInputError if it names too much or nothing real.

    ``field`` is where the settings sit in the spec, for the error messages.
    """
    prefixes = tuple(_prefixes(model, freeze, field))
    frozen: list[str] = []
    count = 0
    left = 0
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            frozen.append(name)
            count += param.numel()
        elif param.requires_grad:
            left += param.numel()
    if left == 0:
        raise BadInputError("InvalidSpec", f"{field} freezes every parameter: nothing would train")
    log.info("freeze: %d tensors (%d parameters) stay fixed", len(frozen), count)
    return Frozen(tuple(frozen), count)
