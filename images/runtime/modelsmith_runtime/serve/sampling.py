"""Per-request sampling over one batched logits tensor.

Torch is imported where it is used: the event loop's side builds SamplingParams too.

Each row follows its own request's parameters (OpenAI's temperature, top_p, seed):
greedy rows are one argmax for all of them; sampled rows draw from their own
torch.Generator, so a request with a seed gets the same text whatever else shares
its batch, which a shared generator could not promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    """0 is greedy."""
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    """vLLM's extension: generate max_tokens whatever the model says (benchmarks)."""


def generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    import torch

    if params.temperature == 0:
        return None
    made = torch.Generator(device=device)
    if params.seed is None:
        made.seed()
    else:
        made.manual_seed(params.seed)
    return made


def _draw(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    import torch

    probs = torch.softmax(logits / params.temperature, dim=-1)
    ordered, order = probs.sort(descending=True)
    if params.top_p < 1.0:
        keep = ordered.cumsum(-1) - ordered < params.top_p  # the top token always stays
        ordered = ordered * keep
    pick = torch.multinomial(ordered, 1, generator=gen)
    return int(order[pick])


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """One next token per row of ``logits`` ([rows, vocab], finite)."""
    tokens: list[int] = logits.argmax(dim=-1).tolist()
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.temperature > 0:
            tokens[row] = _draw(logits[row], p, gen)
    return tokens
