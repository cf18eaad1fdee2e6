"""The running batch of iteration-level batching: one left-padded KV cache for all rows.

Left padding puts every row's newest token in the last column, so one forward of
[rows, 1] new tokens advances every row by a token and `logits_to_keep=1` reads each
row's next-token distribution from the same place. Rows of different lengths differ
only in how many masked columns they carry on the left; rotary positions come from
`position_ids` (the count of real tokens before a column), not from the column index,
so the padding shifts nothing.

New requests join at a step boundary: their prompts are prefilled on a cache of their
own, then both caches are left-padded to one length and concatenated along the batch
dimension. Finished rows leave by index selection, and columns that are padding in
every remaining row are cut off the left, so the cache never grows past the longest
live row. Joining copies the cache once per join; decoding never does.

Only caches made of plain `DynamicLayer`s (full attention) can be padded and joined
this way; `mergeable` says whether a model's cache is one, and the engine admits new
requests only into an empty batch when it is not (sliding-window and linear-attention
caches keep per-layer state that left-padding would corrupt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class KVBatch:
    cache: Any
    """A transformers DynamicCache of [rows, heads, columns, head_dim] tensors per layer."""
    mask: torch.Tensor
    """[rows, columns], 1 for real tokens, 0 for left padding."""

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])


def mergeable(cache: Any) -> bool:
    """Whether rows of this cache can be left-padded and concatenated with another's."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _forward(model: Any, ids: torch.Tensor, batch: KVBatch, positions: torch.Tensor) -> Any:
    return model(
        input_ids=ids,
        attention_mask=batch.mask,
        position_ids=positions,
        past_key_values=batch.cache,
        use_cache=True,
        logits_to_keep=1,
    )


def prefill(
    model: Any, prompts: list[list[int]], device: torch.device
) -> tuple[KVBatch, torch.Tensor]:
    """A new batch holding ``prompts`` and each row's next-token logits ([rows, vocab], fp32)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batch = KVBatch(DynamicCache(config=model.config), mask)
    out = _forward(model, ids, batch, positions)
    batch.cache = out.past_key_values
    logits: torch.Tensor = out.logits[:, -1, :].float()
    return batch, logits


def decode(model: Any, batch: KVBatch, tokens: list[int]) -> torch.Tensor:
    """Feed one token per row; each row's next-token logits ([rows, vocab], fp32)."""
    device = batch.mask.device
    positions = batch.mask.sum(-1, keepdim=True)
    batch.mask = torch.cat([batch.mask, torch.ones_like(positions)], dim=-1)
    ids = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(-1)
    out = _forward(model, ids, batch, positions)
    batch.cache = out.past_key_values
    logits: torch.Tensor = out.logits[:, -1, :].float()
    return logits


def _left_pad(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    missing = columns - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    padded: torch.Tensor = F.pad(tensor, pad)
    return padded


def merge(a: KVBatch, b: KVBatch) -> KVBatch:
    """One batch with a's rows, then b's, both left-padded to the longer one."""
    columns = max(a.columns, b.columns)
    layers = [
        (
            torch.cat([_left_pad(x.keys, columns, -2), _left_pad(y.keys, columns, -2)]),
            torch.cat([_left_pad(x.values, columns, -2), _left_pad(y.values, columns, -2)]),
        )
        for x, y in zip(a.cache.layers, b.cache.layers, strict=True)
    ]
    mask = torch.cat([_left_pad(a.mask, columns, -1), _left_pad(b.mask, columns, -1)])
    return KVBatch(DynamicCache(ddp_cache_data=layers), mask)


def select(batch: KVBatch, keep: list[int]) -> KVBatch:
    """Only the rows ``keep``, with the columns no kept row uses cut off the left."""
    index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    used = mask.any(dim=0)
    start = int(used.to(torch.int8).argmax()) if bool(used.any()) else 0
    for layer in batch.cache.layers:
        layer.keys = layer.keys.index_select(0, index)[..., start:, :]
        layer.values = layer.values.index_select(0, index)[..., start:, :]
    return KVBatch(batch.cache, mask[:, start:])
