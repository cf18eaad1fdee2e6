"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2020) on a frozen base.

Each named sublayer of every decoder layer (self_attn, mlp) gets a small residual MLP
on its output, before the decoder layer adds that output to the residual stream:
``h + up(act(down(h)))``, with ``up`` zero-initialised so that the adapted model
starts as exactly the base (eval_loss_before is the base's loss).

Written here rather than taken from a library: peft 0.21 has no bottleneck adapters,
and AdapterHub's `adapters` 1.3 requires transformers 4.57 (installing it would move
transformers 5.25, tokenizers and huggingface-hub down for every workload image).

The adapter is attached as a child module of its sublayer (named `bottleneck_adapter`)
and applied by a forward hook, so the base's own parameter names, code and weights
are untouched. The published layout is the adapter alone, beside `modelsmith_base.json`:

- `bottleneck_adapter.json`: the settings and the bottleneck width.
- `bottleneck_adapter.safetensors`: the adapter tensors, by their full parameter name.

A nonlinear residual MLP cannot be folded into the base's linear weights, so there is
no merged form: `load` attaches the adapter to the base again, which is what serving it
takes (transformers alone, QuantizeJob and InferenceService read plain models only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from modelsmith.api.finetune import Activation, Adapter
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.freeze import decoder_layers

NAME = "bottleneck_adapter"
CONFIG = f"{NAME}.json"
WEIGHTS = f"{NAME}.safetensors"
DEFAULT_REDUCTION = 16
ACTIVATIONS = {
    Activation.RELU: torch.nn.ReLU,
    Activation.GELU: torch.nn.GELU,
    Activation.SILU: torch.nn.SiLU,
}


class Bottleneck(torch.nn.Module):
    def __init__(self, hidden: int, size: int, activation: Activation) -> None:
        super().__init__()
        self.down = torch.nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(size, hidden)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.to(self.down.weight.dtype)
        return h + self.up(self.act(self.down(x))).to(h.dtype)


def _hook(module: torch.nn.Module, _args: Any, output: Any) -> Any:
    adapter = getattr(module, NAME)
    if isinstance(output, tuple):  # attention returns (output, weights)
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def width(hidden: int, settings: Adapter) -> int:
    if settings.bottleneck_size is not None:
        return settings.bottleneck_size
    return max(1, hidden // (settings.reduction_factor or DEFAULT_REDUCTION))


def attach(model: Any, settings: Adapter) -> int:
    """Freeze the base, attach an adapter to each target sublayer; the bottleneck width."""
    hidden = int(model.config.get_text_config().hidden_size)
    size = width(hidden, settings)
    _path, layers = decoder_layers(model)
    model.requires_grad_(False)
    device = next(model.parameters()).device
    for layer in layers:
        children = dict(layer.named_children())
        for target in settings.target_modules:
            sublayer = children.get(target)
            if sublayer is None:
                raise BadInputError(
                    "InvalidSpec",
                    f"adapter.targetModules: the decoder layers have no sublayer {target!r} "
                    f"(they have: {', '.join(children)})",
                )
            sublayer.add_module(NAME, Bottleneck(hidden, size, settings.activation).to(device))
            sublayer.register_forward_hook(_hook)
    return size


def state(model: Any) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if f".{NAME}." in name
    }


def save(model: Any, settings: Adapter, base_uri: str, staging: Path) -> None:
    from safetensors.torch import save_file

    hidden = int(model.config.get_text_config().hidden_size)
    config = {
        **settings.model_dump(mode="json", by_alias=True),
        "bottleneckSize": width(hidden, settings),
        "baseModel": base_uri,
    }
    (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(state(model), str(staging / WEIGHTS))


def load(model: Any, directory: Path) -> Any:
    """The base ``model`` with the published adapter of ``directory`` attached."""
    from safetensors.torch import load_file

    config = json.loads((directory / CONFIG).read_text())
    settings = Adapter.model_validate(
        {k: config[k] for k in ("bottleneckSize", "targetModules", "activation")}
    )
    attach(model, settings)
    tensors = load_file(str(directory / WEIGHTS))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    wanted = set(state(model))
    if unexpected or wanted & set(missing):
        raise BadInputError(
            "InvalidModel", f"{directory}: the adapter does not fit this base ({unexpected})"
        )
    return model
