"""Each QuantizeJob method as a torchao config, and where torchao 0.18 can run it.

What torchao 0.18 with torch 2.15 does on a CPU, as found by running each config:

- int8-weight-only: `Int8WeightOnlyConfig` (per-row int8) runs everywhere.
- dynamic-int8: `Int8DynamicActivationInt8WeightConfig` runs everywhere.
- int4-weight-only: `Int4WeightOnlyConfig` has no CPU path: its "plain" packing needs the
  `mslk` kernels, "tile_packed_to_4d" (tinygemm) needs CUDA sm80+ and bf16 weights,
  "plain_int32" is XPU/NPU only. On CUDA sm80+ it is used in bf16 with tinygemm's
  packing (the fast kernel; the checkpoint then loads on CUDA only), unless the spec
  asks for an export (tinygemm's packed op has no ONNX form). Anywhere else the
  method falls back to `IntxWeightOnlyConfig(torch.int4, PerGroup(g), ASYMMETRIC)`:
  the same int4 grid and group scales, torchao's CPU/edge format, which stores each
  4-bit value unpacked in a byte, so it saves accuracy-wise what int4 saves but its
  file is no smaller than int8's. The metrics say which (`packed_int4`).
- gptq: our `gptq` module (torchao's GPTQ is CUDA-only), stored in the same Intx int4
  format as the fallback above, so it runs and loads everywhere.
- fp8: `Float8DynamicActivationFloat8WeightConfig` needs CUDA compute capability 8.9+
  (Ada, Hopper); elsewhere the method is refused rather than silently swapped for
  fp8 weight-only storage, which would not buy the fp8 matmul speed it is chosen for.

Modules are skipped by transformers' own `modules_to_not_convert` matching (module
path prefix, regex, or suffix: "lm_head", "layers.0", "mlp.down_proj"), so what is kept
here and what `from_pretrained` keeps when it loads the checkpoint are the same set.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelsmith.api.quantize import QuantizeJobSpec, QuantMethod
from modelsmith_runtime.errors import BadInputError, TransientError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_GROUP_SIZE = 128
FP8_CAPABILITY = (8, 9)
TINYGEMM_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Choice:
    method: QuantMethod
    config: Any
    """The torchao AOBaseConfig transformers' TorchAoConfig applies and records."""
    bits: int
    group_size: int | None
    dtype: torch.dtype | str
    """Load dtype: "auto" keeps the artifact's; tinygemm int4 needs bfloat16."""
    packed_int4: bool = False


def group_size(spec: QuantizeJobSpec) -> int:
    return spec.group_size or DEFAULT_GROUP_SIZE


def check_spec(spec: QuantizeJobSpec, calibration: str | None) -> None:
    """What the model's rules cannot see (they hold already: the spec was parsed with
    them, CEL and Python from one definition in the API models)."""
    if spec.method == QuantMethod.GPTQ and not calibration:
        raise BadInputError("InvalidSpec", "method gptq needs calibration data")
    for pattern in spec.keep_in_high_precision:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise BadInputError(
                "InvalidSpec", f"keepInHighPrecision: {pattern!r} is not a valid pattern: {exc}"
            ) from exc


def _capability(device: torch.device) -> tuple[int, int] | None:
    import torch

    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def choose(spec: QuantizeJobSpec, device: torch.device) -> Choice:
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        MappingType,
        PerGroup,
        PerRow,
    )

    method, capability = spec.method, _capability(device)
    if method == QuantMethod.INT8_WEIGHT_ONLY:
        return Choice(method, Int8WeightOnlyConfig(), 8, None, "auto")
    if method == QuantMethod.DYNAMIC_INT8:
        return Choice(method, Int8DynamicActivationInt8WeightConfig(), 8, None, "auto")
    if method == QuantMethod.FP8:
        if capability is None:
            raise TransientError(
                "GPUUnavailable",
                f"method fp8 needs a CUDA GPU; this QuantizeJob asks for resources.gpus: "
                f"{spec.resources.gpus} but the pod sees none (driver or device plugin); "
                "a retry may land on a healthy node",
            )
        if capability < FP8_CAPABILITY:
            raise BadInputError(
                "Unsupported",
                f"method fp8 needs CUDA compute capability 8.9+ and this GPU "
                f"({torch.cuda.get_device_name(device)}) has {capability[0]}.{capability[1]}: "
                "select L4/L40/H100-class nodes, or use int8-weight-only",
            )
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        return Choice(method, config, 8, None, torch.bfloat16)
    size = group_size(spec)
    tinygemm = capability is not None and capability >= TINYGEMM_CAPABILITY
    if method == QuantMethod.INT4_WEIGHT_ONLY and tinygemm and spec.export is None:
        config = Int4WeightOnlyConfig(group_size=size, int4_packing_format="tile_packed_to_4d")
        return Choice(method, config, 4, size, torch.bfloat16, packed_int4=True)
    if method == QuantMethod.INT4_WEIGHT_ONLY:
        log.info(
            "int4-weight-only on %s: torchao's Intx int4 format (unpacked, see methods)", device
        )
    intx = IntxWeightOnlyConfig(
        weight_dtype=torch.int4, granularity=PerGroup(size), mapping_type=MappingType.ASYMMETRIC
    )
    return Choice(method, intx, 4, size, "auto")


def kept(name: str, patterns: list[str]) -> bool:
    """Whether transformers' torchao loader leaves module ``name`` unquantized."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return not should_convert_module(name, patterns)


def skip_list(model: Any, spec: QuantizeJobSpec, choice: Choice) -> tuple[list[str], list[str]]:
    """(modules_to_not_convert, the linear layers that will be quantized).

    Layers whose input width is not a multiple of the group size cannot be grouped:
    torchao would leave them as they are without a word; here they are named in the
    log and added to the skip list, so the saved config says so too.
    """
    import torch

    patterns = list(spec.keep_in_high_precision)
    targets, ungroupable = [], []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or kept(name, patterns):
            continue
        if choice.group_size and module.in_features % choice.group_size:
            ungroupable.append(name)
        else:
            targets.append(name)
    if ungroupable:
        log.warning(
            "kept in high precision, input width not a multiple of group size %s: %s",
            choice.group_size,
            ", ".join(ungroupable),
        )
        patterns += [re.escape(name) for name in ungroupable]
    if not targets:
        raise BadInputError(
            "NothingToQuantize",
            f"no linear layer is left to quantize (keepInHighPrecision: "
            f"{spec.keep_in_high_precision}, group size {choice.group_size}, "
            f"ungroupable: {len(ungroupable)})",
        )
    return patterns, targets
