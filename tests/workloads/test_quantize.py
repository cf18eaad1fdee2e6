"""`modelsmith-runtime quantize` as real processes: every CPU method, and the quality gate.

Each method's run is checked for what matters downstream: the perplexity delta it
reports is the delta of the model it published (reloaded here with nothing but
`AutoModelForCausalLM.from_pretrained`), the weights are really torchao tensors except
where the spec kept them in high precision, the files shrank, and the model generates.
The runs start together, two at a time, once per module.
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
from tests.workloads.observe import Observed, run_observed
from tests.workloads.tiny_dataset import documents
from tests.workloads.tiny_model import quantize_config, tiny_model, write_jsonl

METHODS = {
    "int8-weight-only": ("Int8Tensor", 8),
    "dynamic-int8": ("Int8Tensor", 8),
    "int4-weight-only": ("IntxUnpackedToInt8Tensor", 4),
    "gptq": ("IntxUnpackedToInt8Tensor", 4),
}
LINEARS = 2 * 7  # two decoder layers of q, k, v, o, gate, up, down
VERSION = "1.2.3-alpha.20231001+build.7"
"""spec.version of the int8 run: the artifact's manifest and the result must carry it."""


@dataclass(frozen=True)
class Runs:
    base: str
    root: Path
    eval_texts: list[str]
    methods: dict[str, Run]
    gate: Run
    observed: Observed
    """The int8-weight-only run, scraped and reporting progress while it ran."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tiny_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("quantize")
    texts = list(documents(40, 123))
    evalset = write_jsonl(root / "eval.jsonl", [{"text": t} for t in texts])
    calibration = root / "calibration.txt"
    calibration.write_text("\n".join(documents(200, 77)) + "\n")
    gate = {"evalDataset": {"uri": str(evalset)}, "maxPerplexityIncreasePercent": 50}
    specs: dict[str, dict[str, Any]] = {m: {"qualityGate": gate} for m in METHODS}
    specs["dynamic-int8"]["keepInHighPrecision"] = ["lm_head", "model.layers.0"]
    specs["int8-weight-only"]["version"] = VERSION
    specs["int4-weight-only"]["groupSize"] = 32
    specs["gptq"] |= {"groupSize": 32, "calibration": {"dataset": {"uri": str(calibration)}}}
    configs = {
        method: quantize_config(base, str(root / method), method, **spec)
        for method, spec in specs.items()
    }
    configs["gate"] = quantize_config(
        base,
        str(root / "gated" / "model"),
        "int4-weight-only",
        groupSize=32,
        qualityGate={**gate, "maxPerplexityIncreasePercent": 0.0001},
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        observing = pool.submit(
            run_observed, "quantize", configs.pop("int8-weight-only"), root / "work-observed"
        )
        futures = {
            name: pool.submit(run_component, "quantize", config, root / f"work-{name}")
            for name, config in configs.items()
        }
        done = {name: future.result() for name, future in futures.items()}
        observed = observing.result()
    gate_run = done.pop("gate")
    done["int8-weight-only"] = observed.run
    return Runs(base, root, texts, done, gate_run, observed)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_publishes_a_loadable_model_with_its_perplexity_delta(
    runs: Runs, method: str
) -> None:
    import torch
    from torchao.utils import TorchAOBaseTensor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelsmith_runtime import hfmodel

    run = runs.methods[method]
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.error is None, run.output
    out = runs.root / method
    assert run.result.uri == str(out)
    assert run.result.digest == artifact_digest(out)
    m = run.result.metrics
    before, after = m["perplexity_before"], m["perplexity_after"]
    assert 1 < before < 10, m  # the tiny model is trained: far below its 384-token vocabulary
    assert m["perplexity_increase_percent"] == pytest.approx((after - before) / before * 100)
    assert abs(m["perplexity_increase_percent"]) < 5, m
    kept_layer_0 = method == "dynamic-int8"  # keepInHighPrecision: [lm_head, model.layers.0]
    assert m["size_bytes_after"] < (0.8 if kept_layer_0 else 0.6) * m["size_bytes_before"], m
    assert m["bits"] == METHODS[method][1]
    assert m["quantized_modules"] == (LINEARS // 2 if kept_layer_0 else LINEARS)
    manifest = json.loads((out / COMPLETION_MARKER).read_text())
    assert manifest["method"] == method
    version = VERSION if method == "int8-weight-only" else None
    assert (manifest.get("version"), run.result.version) == (version, version)
    assert list(out.glob("*.safetensors"))

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    weight = model.model.layers[1].mlp.down_proj.weight
    assert isinstance(weight, TorchAOBaseTensor)
    assert type(weight).__name__ == METHODS[method][0]
    assert not isinstance(model.lm_head.weight, TorchAOBaseTensor)  # kept by default
    first = model.model.layers[0].self_attn.q_proj.weight
    assert isinstance(first, TorchAOBaseTensor) != kept_layer_0
    assert hfmodel.perplexity(model, tokenizer, runs.eval_texts) == pytest.approx(after, rel=1e-5)
    enc = tokenizer(["The cat"], return_tensors="pt")
    generated = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > enc.input_ids.shape[1]
    assert torch.all(generated[0, : enc.input_ids.shape[1]] == enc.input_ids[0])


def test_gptq_stores_other_integers_than_round_to_nearest(runs: Runs) -> None:
    """GPTQ moves integers to cancel the rounding error on calibration activations, so
    its weights must differ from plain rounding's on the same grid."""
    from transformers import AutoModelForCausalLM

    def qdata(name: str) -> Any:
        model = AutoModelForCausalLM.from_pretrained(str(runs.root / name))
        return model.model.layers[0].self_attn.q_proj.weight.qdata

    gptq, rtn = qdata("gptq"), qdata("int4-weight-only")
    changed = float((gptq != rtn).float().mean())
    assert 0.05 < changed < 0.9, changed


def test_the_gate_fails_the_run_and_publishes_nothing(runs: Runs) -> None:
    run = runs.gate
    assert run.returncode == ExitCode.BAD_INPUT, run.output
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "QualityGateFailed"
    message = run.result.error.message
    assert "maxPerplexityIncreasePercent 0.0001%" in message
    assert "nothing was published" in message
    numbers = [float(x) for x in message.split("(")[1].split(" on ")[0].split(" -> ")]
    assert numbers[1] > numbers[0]
    assert run.result.uri is None
    assert not (runs.root / "gated" / "model").exists()
    assert not list(runs.root.rglob(".staging-*"))  # nor anything half-written


def test_a_running_quantization_serves_its_gauges_and_reports_each_phase(runs: Runs) -> None:
    result = runs.observed.run.result
    assert result is not None and result.error is None, runs.observed.run.output
    final = runs.observed.metrics()
    assert final["modelsmith_quantize_step"] == final["modelsmith_quantize_total_steps"] == 4
    for name in ("perplexity_before", "perplexity_after", "perplexity_increase_percent"):
        assert final[f"modelsmith_quantize_{name}"] == pytest.approx(result.metrics[name])
    assert final["modelsmith_quantize_quantized_modules"] == LINEARS
    steps = [body["step"] for _auth, body in runs.observed.reports]
    assert steps == [1, 2, 3, 4], runs.observed.reports
    assert {body["total"] for _auth, body in runs.observed.reports} == {4}
    assert {auth for auth, _ in runs.observed.reports} == {"Bearer quantize-pod-token"}
