"""QuantizeJob: post-training quantization (torchao) behind a perplexity quality gate."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from modelsmith.api.common import (
    BatchStatus,
    Input,
    ModelSpec,
    batch_columns,
    cel,
    defaulted,
)
from modelsmith.api.meta import CamelModel, KindInfo, LongestChild


class QuantMethod(StrEnum):
    INT8_WEIGHT_ONLY = "int8-weight-only"
    INT4_WEIGHT_ONLY = "int4-weight-only"
    GPTQ = "gptq"
    DYNAMIC_INT8 = "dynamic-int8"
    FP8 = "fp8"


class Calibration(CamelModel):
    """Data the calibrated methods (GPTQ) run through the model."""

    dataset: Input = Field(description="Text used for calibration.")
    samples: int = Field(default=128, ge=1, le=100_000, description="Sequences to use.")


class QualityGate(CamelModel):
    """Fail the job when quantization costs more quality than this."""

    eval_dataset: Input | None = Field(
        default=None, description="Held-out text for perplexity (default: calibration data)."
    )
    max_perplexity_increase_percent: float = Field(
        default=5.0, ge=0, le=1000, description="Allowed perplexity increase, in percent."
    )


class ExportFormat(StrEnum):
    ONNX = "onnx"
    TENSORRT = "tensorrt"


EXPORTABLE = ("int8-weight-only", "int4-weight-only", "gptq")


class Export(CamelModel):
    """An ONNX copy of the quantized model, checked against it before anything is published."""

    format: ExportFormat = Field(
        description="onnx: onnx/model.onnx (+ model.onnx.data) in the artifact, loadable by "
        "onnxruntime. tensorrt: the same ONNX model plus a TensorRT engine "
        "(tensorrt/model.plan) built on the job's GPU; needs resources.gpus >= 1 and an image "
        "with TensorRT."
    )
    opset: int = Field(default=18, ge=18, le=24, description="ONNX opset of the graph (18-24).")
    tolerance: float = Field(
        default=1e-2,
        gt=0,
        le=10,
        description="Largest absolute logit difference allowed between onnxruntime and the "
        "torch model on a fixed prompt; beyond it the job fails and publishes nothing.",
    )


class QuantizeJobSpec(ModelSpec):
    """Desired state of a QuantizeJob."""

    model_config = cel(
        (
            "!has(self.groupSize) || self.method == 'int4-weight-only' || self.method == 'gptq'",
            "groupSize applies to int4-weight-only and gptq only",
            lambda s: s.group_size is None or s.method in ("int4-weight-only", "gptq"),
        ),
        (
            "self.method != 'gptq' || has(self.calibration)",
            "method gptq needs calibration",
            lambda s: s.method != "gptq" or s.calibration is not None,
        ),
        (
            "self.method != 'fp8' || self.resources.gpus > 0",
            "method fp8 needs resources.gpus of 1 or more: its matmuls run in fp8 on the GPU "
            "(CUDA compute capability 8.9+: L4, L40, H100...); on the CPU use "
            "int8-weight-only or dynamic-int8",
            lambda s: s.method != "fp8" or s.resources.gpus > 0,
        ),
        (
            "!has(self.export) || self.method in " + str(list(EXPORTABLE)),
            "export supports methods int8-weight-only, int4-weight-only and gptq: "
            "dynamic-int8's activation rounding does not survive the ONNX translation and "
            "fp8 has no onnxruntime CPU kernel to verify the export against",
            lambda s: s.export is None or s.method in EXPORTABLE,
        ),
        (
            "!has(self.export) || self.export.format != 'tensorrt' || self.resources.gpus > 0",
            "export.format tensorrt needs resources.gpus of 1 or more: TensorRT builds its "
            "engine on the GPU that will run it",
            lambda s: s.export is None or s.export.format != "tensorrt" or s.resources.gpus > 0,
        ),
    )

    model: Input = Field(description="The model to quantize, usually fromRef a FineTune.")
    method: QuantMethod = Field(description="Quantization method.")
    group_size: Literal[32, 64, 128, 256] | None = Field(
        default=None,
        description="Weights per scale (int4-weight-only, gptq): 32, 64, 128 or 256.",
    )
    calibration: Calibration | None = Field(default=None, description="Calibration (gptq).")
    keep_in_high_precision: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["lm_head"],
        max_length=256,
        description="Module names left unquantized (e.g. lm_head).",
    )
    quality_gate: QualityGate = defaulted(QualityGate, "Perplexity bound that fails the job.")
    export: Export | None = Field(
        default=None,
        description="Also write the quantized model as ONNX (and optionally a TensorRT "
        "engine) into the artifact, verified against the torch model before publishing.",
    )


QUANTIZEJOB = KindInfo(
    kind="QuantizeJob",
    plural="quantizejobs",
    short_names=("qj",),
    spec=QuantizeJobSpec,
    status=BatchStatus,
    description="INT8 / INT4 / GPTQ / FP8 post-training quantization with a quality gate.",
    longest_child=LongestChild("NAME-run-0", "the hostname of its pod"),
    printer_columns=batch_columns(
        "PPLDelta%", ".status.outputs.metrics.perplexity_increase_percent", versioned=True
    ),
)
