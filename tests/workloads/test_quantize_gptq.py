"""The GPTQ algorithm in process: it must beat round-to-nearest where GPTQ claims to.

GPTQ minimizes the layer's output error on its calibration inputs, ||XW^T - XQ^T||^2,
not the weight error; on correlated inputs (real activations are) that is measurably
lower than rounding each weight to the nearest level of the very same grid.
"""

from __future__ import annotations

import pytest
import torch

from modelsmith_runtime.quantize import gptq


def _layer(
    seed: int, rows: int = 48, inputs: int = 128, samples: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(inputs) + 0.4 * torch.randn(inputs, inputs, generator=g)
    x = torch.randn(samples, inputs, generator=g) @ mixing
    w = 0.05 * torch.randn(rows, inputs, generator=g)
    return x, w, 2 * x.T @ x / samples


def _output_error(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float(((x @ w.T - x @ q.T) ** 2).sum())


@pytest.mark.parametrize("group", [32, 64, 128])
def test_gptq_beats_round_to_nearest_on_the_same_grid(group: int) -> None:
    x, w, h = _layer(group)
    ours = gptq.quantize_weight(w, h, group)
    rtn = gptq.rtn_weight(w, group)
    assert _output_error(x, w, ours.values) < 0.8 * _output_error(x, w, rtn.values)
    assert ours.scale.shape == (w.shape[0], w.shape[1] // group)


def test_values_lie_on_the_int4_grid_and_survive_torchao_exactly() -> None:
    x, w, h = _layer(1)
    ours = gptq.quantize_weight(w, h, 32)
    tensor = gptq.to_torchao(ours, 32, torch.float32)
    assert torch.equal(tensor.dequantize(), ours.values)
    assert int(tensor.qdata.min()) >= gptq.QMIN and int(tensor.qdata.max()) <= gptq.QMAX
    assert torch.allclose(torch.nn.functional.linear(x, tensor), x @ ours.values.T, atol=1e-4)


def test_inputs_never_seen_get_zero_weights() -> None:
    x, w, _ = _layer(2, inputs=64)
    x[:, 5] = 0
    h = 2 * x.T @ x / len(x)
    ours = gptq.quantize_weight(w, h, 32)
    assert torch.all(ours.values[:, 5] == 0)


def test_hessians_are_collected_from_every_layer_input() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 4))

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids)  # type: ignore[no-any-return]

    windows = torch.randint(0, 10, (3, 5))
    hessians = gptq.collect_hessians(Wrapper(), {"inner.1": model[1]}, windows, batch=2)
    x = model[0](windows).reshape(-1, 8).detach()
    assert torch.allclose(hessians["inner.1"], 2 * x.T @ x / 15, atol=1e-5)
