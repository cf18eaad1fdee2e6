"""QuantizeJob `spec.export`: real `modelsmith-runtime quantize` runs that write ONNX.

The ONNX file the workload published is loaded here in onnxruntime, and its logits are
compared with those of the published torch model (loaded back with
`AutoModelForCausalLM.from_pretrained`) on a prompt of this test's own, not the
workload's: the workload's reported difference is checked, not trusted. The runs start
together, two at a time, once per module.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelsmith.contract import COMPLETION_MARKER, ExitCode
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, run_component
from tests.workloads.tiny_dataset import documents
from tests.workloads.tiny_model import quantize_config, tiny_model, write_jsonl

EXPORTED = {  # int8 with opset and tolerance set; gptq with the defaults (18, 1e-2)
    "int8-weight-only": {"export": {"format": "onnx", "opset": 21, "tolerance": 1e-3}},
    "gptq": {"groupSize": 32, "export": {"format": "onnx"}},
}
OPSET = {"int8-weight-only": 21, "gptq": 18}
LINEARS = 2 * 7
LINEAR_WEIGHTS = 2 * (4 * 64 * 64 + 3 * 64 * 192)  # elements in the quantized layers
TOLERANCE = 1e-3
PROMPTS = ["The old man walks to the market with a red bag.", "Where does the dog sleep"]


@dataclass(frozen=True)
class Runs:
    root: Path
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("quantize-onnx")
    evalset = write_jsonl(root / "eval.jsonl", [{"text": t} for t in documents(20, 5)])
    calibration = root / "calibration.txt"
    calibration.write_text("\n".join(documents(100, 9)) + "\n")
    gate = {"evalDataset": {"uri": str(evalset)}, "maxPerplexityIncreasePercent": 50}
    configs: dict[str, dict[str, Any]] = {}
    for method, extra in EXPORTED.items():
        spec: dict[str, Any] = {"qualityGate": gate, **extra}
        if method == "gptq":
            spec["calibration"] = {"dataset": {"uri": str(calibration)}, "samples": 16}
        configs[method] = quantize_config(base, str(root / method), method, **spec)
    configs["tensorrt"] = quantize_config(
        base,
        str(root / "tensorrt"),
        "int8-weight-only",
        qualityGate=gate,
        export={"format": "tensorrt"},
        resources={"gpus": 1},
    )
    configs["mismatch"] = quantize_config(  # a tolerance no float computation meets
        base,
        str(root / "mismatch"),
        "int8-weight-only",
        qualityGate=gate,
        export={"format": "onnx", "tolerance": 1e-12},
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_component, "quantize", config, root / f"work-{name}")
            for name, config in configs.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    return Runs(root, done)


def _max_abs_diff(artifact: Path) -> float:
    """This test's own check: onnxruntime vs the published torch model, attended positions."""
    import numpy as np
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(artifact)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(artifact))
    tokenizer.padding_side = "right"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert enc.attention_mask.sum(1).min() < enc.attention_mask.shape[1]  # padding is covered
    with torch.no_grad():
        reference = model(**enc).logits.numpy()
    session = onnxruntime.InferenceSession(
        str(artifact / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = {"input_ids": enc.input_ids.numpy(), "attention_mask": enc.attention_mask.numpy()}
    (logits,) = session.run(["logits"], inputs)
    assert logits.shape == reference.shape
    mask = enc.attention_mask.numpy().astype(bool)
    assert np.abs(reference[mask]).max() > 1  # real logits, not zeros on both sides
    assert (logits[mask].argmax(-1) == reference[mask].argmax(-1)).all()
    return float(np.abs(logits - reference)[mask].max())


def _integer_weights(onnx_file: Path) -> int:
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    return sum(
        1
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 and min(t.dims) >= 32
    )


@pytest.mark.parametrize("method", sorted(EXPORTED))
def test_export_publishes_onnx_that_onnxruntime_runs_like_the_model(
    runs: Runs, method: str
) -> None:
    import onnx

    run = runs.runs[method]
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.error is None, run.output
    out = runs.root / method
    assert run.result.digest == artifact_digest(out)
    manifest = json.loads((out / COMPLETION_MARKER).read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {"onnx/model.onnx", "onnx/model.onnx.data", "onnx/report.json"} <= listed
    onnx_file = out / "onnx" / "model.onnx"
    onnx.checker.check_model(str(onnx_file))
    loaded = onnx.load(str(onnx_file), load_external_data=False)
    assert loaded.opset_import[0].version == OPSET[method]
    # The quantized form is what is exported: every quantized linear layer's weight is
    # an int8 initializer (int4 values one per byte for gptq), not a folded float copy.
    assert _integer_weights(onnx_file) == LINEARS

    diff = _max_abs_diff(out)
    assert diff <= TOLERANCE, diff  # this test's bound, tighter than gptq's default
    m = run.result.metrics
    assert m["onnx_tolerance"] == (1e-3 if method == "int8-weight-only" else 1e-2)
    assert 0 <= m["onnx_max_abs_diff"] <= TOLERANCE
    assert m["onnx_opset"] == OPSET[method]
    assert LINEAR_WEIGHTS <= m["onnx_integer_bytes"] < 1.1 * LINEAR_WEIGHTS
    files = (out / "onnx" / "model.onnx").stat().st_size + (
        out / "onnx" / "model.onnx.data"
    ).stat().st_size
    assert m["onnx_size_bytes"] == files
    report = json.loads((out / "onnx" / "report.json").read_text())
    assert report["max_abs_diff"] == m["onnx_max_abs_diff"]
    assert report["file"] == "onnx/model.onnx" and report["format"] == "onnx"


def _refused(runs: Runs, name: str, reason: str) -> str:
    run = runs.runs[name]
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None, run.output
    assert run.result.error.reason == reason, run.result.error
    assert run.result.uri is None
    assert not (runs.root / name).exists()
    assert not list(runs.root.glob(f"{name}*")) and not list(runs.root.rglob(".staging-*"))
    return run.result.error.message


def test_tensorrt_without_a_gpu_fails_clearly_and_publishes_nothing(runs: Runs) -> None:
    message = _refused(runs, "tensorrt", "Unsupported")
    assert "export.format tensorrt needs a GPU with TensorRT" in message
    assert "a CUDA device" in message and "tensorrt Python package" in message


def test_a_mismatch_beyond_the_tolerance_fails_and_publishes_nothing(runs: Runs) -> None:
    message = _refused(runs, "mismatch", "ExportMismatch")
    assert "more than export.tolerance 1e-12" in message
    assert "nothing was published" in message
