"""GPTQ (Frantar et al., 2022, arXiv:2210.17323, Algorithm 1) for nn.Linear weights, torch only.

Why our own: torchao 0.18's `torchao.prototype.gptq` asserts a CUDA device and its
int4 path needs the `mslk` kernels package, so it cannot run on a CPU node (nor on a
GPU without mslk). The algorithm is small; this is the reference one.

GPTQ keeps round-to-nearest's storage format (int4, one scale and zero point per group
of `group_size` input columns) and changes only which integers are stored. It
quantizes a layer's weight one input column at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian
H = 2 X^T X of the layer's calibration inputs X, which minimizes ||X W^T - X Q^T||^2
rather than ||W - Q||^2. Details as in the reference implementation: dead inputs
(zero Hessian diagonal) get zero weights, 1% mean-diagonal damping, the Cholesky
factor of H^-1, lazy batch updates in blocks of columns, and each group's scale and
zero point chosen (min/max, asymmetric) when the loop reaches the group, from the
already error-corrected weights.

The Hessians come from one pass of the calibration windows through the unquantized
model (forward pre-hooks on the layers), not layer by layer through the partly
quantized one, as torchao's observe step also does: a single forward pass, at a small
cost in accuracy against the sequential variant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

QMIN, QMAX = -8, 7
"""Signed int4, as torchao's IntxUnpackedToInt8Tensor stores it."""
PERCDAMP = 0.01
BLOCK = 128


@dataclass(frozen=True)
class Quantized:
    values: torch.Tensor
    """The dequantized weight (N, K): every entry is (q - zero) * scale exactly."""
    scale: torch.Tensor
    """(N, K // group_size)"""
    zero_point: torch.Tensor
    """(N, K // group_size), int8"""


def collect_hessians(
    model: Any, layers: dict[str, torch.nn.Linear], windows: torch.Tensor, batch: int = 8
) -> dict[str, torch.Tensor]:
    """H = 2/n sum x x^T over every input row x each layer sees on ``windows``."""
    hessians = {
        name: torch.zeros(m.in_features, m.in_features, device=windows.device)
        for name, m in layers.items()
    }
    rows = dict.fromkeys(layers, 0)

    def hook(name: str) -> Any:
        def record(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            hessians[name].addmm_(x.t(), x)
            rows[name] += x.shape[0]

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.inference_mode():
            for start in range(0, len(windows), batch):
                model(input_ids=windows[start : start + batch])
    finally:
        for handle in handles:
            handle.remove()
    return {name: 2 * h / max(rows[name], 1) for name, h in hessians.items()}


def group_qparams(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max scale and zero point per row of ``w`` (N, group), zero exact."""
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    scale = torch.clamp((hi - lo) / (QMAX - QMIN), min=torch.finfo(torch.float32).eps)
    zero = torch.clamp(QMIN - torch.round(lo / scale), QMIN, QMAX)
    return scale, zero


def _fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    q = torch.clamp(torch.round(w / scale) + zero, QMIN, QMAX)
    return (q - zero) * scale


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1, damping harder if H is not positive definite."""
    diag = torch.arange(h.shape[0], device=h.device)
    damp = PERCDAMP * float(torch.mean(torch.diag(h)))
    for _ in range(6):
        damped = h.clone()
        damped[diag, diag] += damp
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper: torch.Tensor = torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)
            return upper
        damp *= 10
    raise ValueError("the calibration Hessian is not positive definite even with damping")


def quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, group_size: int) -> Quantized:
    """GPTQ of one weight (N, K) with K a multiple of ``group_size``."""
    w = weight.detach().float().clone()
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"{k} input features are not a multiple of group size {group_size}")
    h = hessian.to(w.device).float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    hinv = _inverse_cholesky(h)
    block = group_size * max(1, BLOCK // group_size)  # groups never straddle blocks
    out = torch.zeros_like(w)
    scales = torch.zeros(n, k // group_size, device=w.device)
    zeros = torch.zeros_like(scales)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                scale, zero = group_qparams(w1[:, i : i + group_size])
                scales[:, col // group_size], zeros[:, col // group_size] = scale, zero
            q = _fake_quant(w1[:, i], scale, zero)
            out[:, col] = q
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return Quantized(out, scales, zeros.to(torch.int8))


def rtn_weight(weight: torch.Tensor, group_size: int) -> Quantized:
    """Round-to-nearest on the same grid: GPTQ's baseline, for tests and the benchmark."""
    w = weight.detach().float()
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    scale, zero = group_qparams(groups.reshape(-1, group_size))
    scale, zero = scale.reshape(n, -1, 1), zero.reshape(n, -1, 1)
    values = _fake_quant(groups, scale, zero).reshape(n, k)
    return Quantized(values, scale.reshape(n, -1), zero.reshape(n, -1).to(torch.int8))


def to_torchao(q: Quantized, group_size: int, dtype: torch.dtype) -> Any:
    """The torchao tensor `IntxWeightOnlyConfig(torch.int4, PerGroup(group_size),
    ASYMMETRIC)` would have made, holding GPTQ's integers: it saves and loads like it."""
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from torchao.quantization.quant_primitives import MappingType

    return IntxUnpackedToInt8Tensor.from_hp(
        q.values.to(dtype),
        (1, group_size),
        torch.int4,
        mapping_type=MappingType.ASYMMETRIC,
        intx_choose_qparams_algorithm=None,
        custom_scale=q.scale.to(dtype),
        custom_zero_point=q.zero_point,
    )
