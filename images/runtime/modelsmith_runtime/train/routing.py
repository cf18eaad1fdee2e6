"""Mixture-of-experts routing with an optional expert capacity, and what it measures.

transformers' Mixtral routes dropless: every token reaches its top-k experts however
many choose the same one. With `architecture.capacityFactor` each expert takes at
most ``capacity = ceil(capacityFactor * tokens * topK / experts)`` token slots per
micro-batch (Switch Transformer, GShard); the slots beyond are dropped for that
expert, which then contributes nothing for the token: the token keeps its other
experts' outputs and the decoder layer's residual path. Slots are granted in GShard's
order, every token's first choice before any second choice, in token order within a
choice, so a capacity drops second choices first.

`RoutedMoeBlock` replaces Mixtral's sparse block in place and keeps its `gate` and
`experts` modules (and so every parameter name, the checkpoint and the export), the
router-logit recording the load-balancing loss is computed from, and the experts'
kernels, which already skip the sentinel index a dropped slot gets. Dropless runs go
through it too, with no capacity, so that both report the same load figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from modelsmith_runtime.train.distributed import Dist


def capacity(factor: float, tokens: int, top_k: int, experts: int) -> int:
    return math.ceil(factor * tokens * top_k / experts)


def limit_to_capacity(
    index: torch.Tensor, weights: torch.Tensor, experts: int, slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k choices (tokens, k) with the slots past an expert's capacity dropped: their
    index becomes the sentinel ``experts`` and their weight 0."""
    order = index.t().reshape(-1)  # every token's first choice, then every second choice
    onehot = nn.functional.one_hot(order, experts)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1
    keep = (position < slots).view(index.shape[1], index.shape[0]).t()
    return torch.where(keep, index, experts), weights * keep


@dataclass
class RoutingMeter:
    """Token slots each expert was routed and processed, per MoE layer, summed on the
    device (no host sync per step) until `collect` reads and resets them."""

    layers: int
    experts: int
    routed: torch.Tensor = field(init=False)
    kept: torch.Tensor = field(init=False)
    last: dict[str, float] = field(default_factory=dict)
    """The figures of the last collected interval: what the run's result reports."""

    def __post_init__(self) -> None:
        self.reset(torch.device("cpu"))

    def reset(self, device: torch.device) -> None:
        self.routed = torch.zeros(self.layers, self.experts, dtype=torch.float64, device=device)
        self.kept = torch.zeros_like(self.routed)

    @torch.no_grad()
    def add(self, layer: int, routed: torch.Tensor, kept: torch.Tensor) -> None:
        if self.routed.device != routed.device:
            self.reset(routed.device)
        self.routed[layer] += _count(routed, self.experts)
        self.kept[layer] += _count(kept, self.experts)

    def collect(self, d: Dist) -> dict[str, float]:
        """Every rank must call it (one all-reduce); the interval's figures, see `load_figures`."""
        counts = d.all_sum([*self.routed.flatten().tolist(), *self.kept.flatten().tolist()])
        size = self.layers * self.experts
        routed = torch.tensor(counts[:size], dtype=torch.float64).view(self.layers, self.experts)
        kept = torch.tensor(counts[size:], dtype=torch.float64).view(self.layers, self.experts)
        self.reset(self.routed.device)
        if routed.sum() > 0:
            self.last = load_figures(routed, kept)
        return self.last


def _count(index: torch.Tensor, experts: int) -> torch.Tensor:
    """Slots per expert; a scatter, not bincount, which syncs with the host on a GPU.
    The sentinel (= experts) of a dropped slot is counted in a column of its own."""
    flat = index.reshape(-1)
    counts = torch.zeros(experts + 1, dtype=torch.float64, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))[:-1]


def load_figures(routed: torch.Tensor, kept: torch.Tensor) -> dict[str, float]:
    """From token-slot counts (layers, experts):

    - ``expert_load_std``: the standard deviation across experts of their utilisation,
      the share of a layer's routed slots each expert processed times the number of
      experts (1 is an even share), averaged over the MoE layers; 0 is perfect balance.
    - ``routed_load_std``: the same from what the router chose, before the capacity.
    - ``expert_load_fraction_<i>``: the share of all routed slots expert i was routed,
      over all layers (sums to 1).
    - ``dropped_token_fraction``: routed slots dropped at an expert's capacity.
    """
    experts = routed.shape[1]
    per_layer = routed.sum(dim=1, keepdim=True).clamp(min=1)
    figures = {
        "expert_load_std": float((kept / per_layer * experts).std(dim=1, unbiased=False).mean()),
        "routed_load_std": float((routed / per_layer * experts).std(dim=1, unbiased=False).mean()),
        "dropped_token_fraction": float(1 - kept.sum() / routed.sum()),
    }
    share = routed.sum(dim=0) / routed.sum()
    figures.update({f"expert_load_fraction_{i}": float(v) for i, v in enumerate(share)})
    return figures


class RoutedMoeBlock(nn.Module):
    """Mixtral's sparse MoE block, with the capacity and the counting added."""

    def __init__(
        self, block: MixtralSparseMoeBlock, layer: int, meter: RoutingMeter, factor: float | None
    ) -> None:
        super().__init__()
        self.gate = block.gate
        self.experts = block.experts
        self.top_k = block.top_k
        self.jitter_noise = block.jitter_noise
        self.layer = layer
        self.factor = factor
        self.meter = meter
        if factor is not None:
            # transformers' grouped and batched expert kernels zero the rows of sentinel
            # slots only under expert parallelism, where a slot bound for another rank's
            # expert is one; a slot dropped at capacity is the same thing and needs the
            # same masking: unmasked, its rows are left uninitialised, and NaN x 0 is NaN.
            self.experts._is_expert_parallel = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        if self.training and self.jitter_noise > 0:
            hidden_states = hidden_states * torch.empty_like(hidden_states).uniform_(
                1.0 - self.jitter_noise, 1.0 + self.jitter_noise
            )
        hidden_states = hidden_states.view(-1, hidden_dim)
        _, weights, index = self.gate(hidden_states)
        routed = index
        experts = self.meter.experts
        if self.factor is not None:
            slots = capacity(self.factor, hidden_states.shape[0], self.top_k, experts)
            index, weights = limit_to_capacity(index, weights, experts, slots)
        if self.training:
            self.meter.add(self.layer, routed, index)
        out = self.experts(hidden_states, index, weights)
        return out.reshape(batch_size, sequence_length, hidden_dim)  # type: ignore[no-any-return]


def install(model: nn.Module, factor: float | None) -> None:
    """Swap every Mixtral sparse block of ``model`` for a `RoutedMoeBlock` sharing one
    meter (before any data-parallel wrapper, which keeps the modules it wraps)."""
    decoder = getattr(model, "model", None)
    blocks = [layer for layer in getattr(decoder, "layers", []) if _moe(layer)]
    if not blocks:
        return
    shared = RoutingMeter(len(blocks), blocks[0].mlp.experts.num_experts)
    for i, decoder_layer in enumerate(blocks):
        decoder_layer.mlp = RoutedMoeBlock(decoder_layer.mlp, i, shared, factor)


def meter(model: nn.Module) -> RoutingMeter | None:
    """The meter of the model's routed blocks (through any wrapper), or None: dense."""
    for module in model.modules():
        if isinstance(module, RoutedMoeBlock):
            return module.meter
    return None


def _moe(decoder_layer: nn.Module) -> bool:
    return isinstance(getattr(decoder_layer, "mlp", None), MixtralSparseMoeBlock)
