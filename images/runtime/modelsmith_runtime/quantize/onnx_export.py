"""`spec.export`: the quantized model as ONNX (and a TensorRT engine), verified first.

What is exported is the quantized model the job publishes, not its unquantized
original: int8-weight-only as int8 weights with per-row scales, int4-weight-only and
gptq as torchao's Intx int4 values (one per byte) with group scales and zero points,
each dequantized in the graph in front of a float MatMul. dynamic-int8 and fp8 are
refused by the spec's rule (see api.quantize): dynamic-int8 exports (once `_int_mm`
is translated) but its per-token activation rounding lands on other integers in
onnxruntime, which moved the tiny test model's logits by 0.07 where the weight-only
methods stay within 3e-6; fp8 has no onnxruntime CPU kernel to verify against.

The exporter is torch.onnx's dynamo path (torch.export, then onnxscript): it traces
through torchao's tensor subclasses and keeps the integer tensors as integer
initializers. The legacy TorchScript exporter also runs these models, but it bakes
every dequantized weight into a float32 constant, so its "int8" ONNX file is the float
model. onnxscript's optimizer would do the same to integer weights under 8192
elements (constant folding of the dequantize Cast); `_keep_integers` stops it, so a
small model's file says what a large one's does. optimum was not used: its ONNX
exporter is a separate package with its own transformers bounds.

The graph takes (input_ids, attention_mask), both int64 [batch, sequence] with dynamic
sizes, and returns float logits [batch, sequence, vocab]; no KV cache (use_cache off):
a prefill-only graph that a scorer or a simple greedy loop can drive.

Verification runs before the completion marker is written: onnxruntime (CPU) on a
fixed two-prompt padded batch, against the same model in torch, at the attended
positions. A difference beyond `export.tolerance` is a deterministic verdict on this
model, so it ends the run like bad input (exit 2) and nothing is published.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modelsmith.api.quantize import Export, ExportFormat
from modelsmith_runtime.errors import BadInputError

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ENGINE = "tensorrt/model.plan"
REPORT = "report.json"
PROMPTS = ("The quick brown fox jumps over the lazy dog.", "A cat")
"""Two lengths, so the check covers padding and a batch of more than one."""
INTEGER_TYPES = ("INT4", "UINT4", "INT8", "UINT8")


def preflight(export: Export | None, cuda: bool) -> None:
    """Refuse a TensorRT export before any work, naming what this pod lacks."""
    if export is None or export.format != ExportFormat.TENSORRT:
        return
    missing = []
    if not cuda:
        missing.append("a CUDA device (the pod sees none)")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the tensorrt Python package (not installed in this image)")
    if missing:
        raise BadInputError(
            "Unsupported",
            "export.format tensorrt needs a GPU with TensorRT; missing: "
            + "; ".join(missing)
            + ". Use export.format onnx, or run on a GPU node with an image that has TensorRT",
        )


def check_dtype(model: Any) -> None:
    import torch

    if model.dtype != torch.float32:
        raise BadInputError(
            "Unsupported",
            f"export: the model is {model.dtype}; the export is verified on onnxruntime's CPU "
            "kernels in float32: quantize a float32 model (e.g. FineTune precision fp32) or "
            "leave export out",
        )


def _logits_module(model: Any) -> Any:
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return out.logits

    return Logits().eval()


def _keep_integers(node: Any) -> bool | None:
    """Never fold a node that reads an integer weight (it would store the float result)."""
    for value in node.inputs:
        const = getattr(value, "const_value", None) if value is not None else None
        if const is not None and value.dtype is not None and value.dtype.name in INTEGER_TYPES:
            return False
    return None


def _export(model: Any, enc: Any, path: Path, opset: int) -> None:
    import onnxscript.optimizer
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    with torch.no_grad():
        program = torch.onnx.export(
            _logits_module(model),
            (enc.input_ids, enc.attention_mask),
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            opset_version=opset,
            optimize=False,
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    onnxscript.optimizer.optimize_ir(program.model, should_fold=_keep_integers)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)


def _integer_bytes(path: Path) -> int:
    """Bytes of integer initializers: what stayed quantized in the file (weights, zero points)."""
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return sum(math.prod(t.dims) for t in graph.initializer if t.data_type in names)


def max_abs_diff(path: Path, model: Any, tokenizer: Any) -> float:
    """onnxruntime against torch on ``PROMPTS``, at the positions the mask attends."""
    import numpy as np
    import onnxruntime
    import torch

    tokenizer.padding_side = "right"
    enc = tokenizer(list(PROMPTS), return_tensors="pt", padding=True)
    device = next(model.parameters()).device
    with torch.no_grad():
        reference = model(
            input_ids=enc.input_ids.to(device),
            attention_mask=enc.attention_mask.to(device),
            use_cache=False,
        ).logits
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(
        ["logits"],
        {"input_ids": enc.input_ids.numpy(), "attention_mask": enc.attention_mask.numpy()},
    )
    mask = enc.attention_mask.numpy().astype(bool)
    diff = np.abs(got.astype(np.float64) - reference.float().cpu().numpy())[mask]
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def _build_engine(onnx_path: Path, engine: Path) -> int:
    """Never run here (no GPU, no TensorRT in CI): written to TensorRT 10's Python API."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BadInputError("ExportFailed", f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        profile.set_shape(name, (1, 1), (1, 128), (8, 2048))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BadInputError("ExportFailed", "TensorRT could not build an engine")
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(bytes(serialized))
    return engine.stat().st_size


def export(model: Any, tokenizer: Any, spec: Export, staging: Path) -> dict[str, float]:
    """Write the export into ``staging`` and verify it; returns its metrics."""
    tokenizer.padding_side = "right"
    enc = tokenizer(list(PROMPTS), return_tensors="pt", padding=True)
    path = staging / ONNX_DIR / ONNX_FILE
    try:
        _export(model, enc.to(next(model.parameters()).device), path, spec.opset)
    except MemoryError:
        raise
    except Exception as exc:  # a graph the exporter cannot translate fails the same way again
        if type(exc).__name__ == "OutOfMemoryError":
            raise
        raise BadInputError(
            "ExportFailed",
            f"torch.onnx.export failed on this model: {type(exc).__name__}: "
            f"{str(exc)[:400]}; nothing was published",
        ) from exc
    diff = max_abs_diff(path, model, tokenizer)
    log.info("onnx: max abs logit diff %.3g (tolerance %g)", diff, spec.tolerance)
    if not diff <= spec.tolerance:
        raise BadInputError(
            "ExportMismatch",
            f"the ONNX model's logits differ from the torch model's by {diff:.4g} on the fixed "
            f"prompt, more than export.tolerance {spec.tolerance}; nothing was published",
        )
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
    metrics = {
        "onnx_opset": float(spec.opset),
        "onnx_size_bytes": float(size),
        "onnx_tolerance": spec.tolerance,
        "onnx_max_abs_diff": diff,
        "onnx_integer_bytes": float(_integer_bytes(path)),
    }
    if spec.format == ExportFormat.TENSORRT:
        metrics["tensorrt_engine_bytes"] = float(_build_engine(path, staging / ENGINE))
    report = {
        "format": spec.format.value,
        "file": f"{ONNX_DIR}/{ONNX_FILE}",
        "inputs": ["input_ids", "attention_mask"],
        "outputs": ["logits"],
        "prompts": list(PROMPTS),
        **{k.removeprefix("onnx_"): v for k, v in metrics.items()},
    }
    if spec.format == ExportFormat.TENSORRT:
        report["engine"] = ENGINE
    (path.parent / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return metrics
