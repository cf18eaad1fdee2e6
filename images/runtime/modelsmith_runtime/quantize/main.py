"""`modelsmith-runtime quantize`: quantize a published model behind a perplexity gate.

`check` is the cheap half (task config, spec, the model artifact, every eval and
calibration line), done before torch is imported. Then: perplexity of the model as it
is, quantization by transformers' TorchAoConfig at load time (GPTQ then replaces the
integers of the same tensors, see `gptq`), perplexity again on the same texts, and
the gate. A gate failure is a deterministic verdict on this model and method, so it
ends the run like bad input (exit 2, reason QualityGateFailed, the numbers in the
message) and nothing is published. Otherwise the model is saved with save_pretrained:
config.json carries the torchao quantization_config, the weights are safetensors
(torchao's tensor subclasses flattened, with their metadata), and
`AutoModelForCausalLM.from_pretrained` loads it as it is. With `spec.export`, the same
model is also written as ONNX into the staging directory and checked against torch
there (see `onnx_export`), so a failed check publishes nothing either.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsmith.api.quantize import QuantizeJobSpec, QuantMethod
from modelsmith.contract import Producer, Result
from modelsmith_runtime import hfmodel, storage
from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.gauges import Gauges
from modelsmith_runtime.progress import ProgressReporter
from modelsmith_runtime.quantize import methods, onnx_export
from modelsmith_runtime.quantize.texts import eval_texts, read_texts
from modelsmith_runtime.task import load_task

log = logging.getLogger(__name__)

MAX_CALIBRATION_TEXTS = 8192
EVAL_TOKENS = 512


@dataclass(frozen=True)
class Plan:
    spec: QuantizeJobSpec
    model_uri: str
    model_dir: Path
    model_digest: str | None
    output: str
    producer: Producer
    eval_texts: list[str]
    eval_source: str
    calibration: list[str] | None


def check(task_config: Path) -> Plan:
    task = load_task(task_config, QuantizeJobSpec)
    spec = task.spec
    calibration_uri = task.input("calibration") if spec.calibration is not None else None
    methods.check_spec(spec, calibration_uri)
    model_uri = task.input("model")
    model_dir = hfmodel.open_model(model_uri, "model")
    eval_uri = task.input("evalDataset") if spec.quality_gate.eval_dataset is not None else None
    texts, source = eval_texts(eval_uri, calibration_uri)
    calibration = None
    if spec.method == QuantMethod.GPTQ and calibration_uri:
        calibration = read_texts(calibration_uri, "calibration.dataset", MAX_CALIBRATION_TEXTS)
    return Plan(
        spec=spec,
        model_uri=model_uri,
        model_dir=model_dir,
        model_digest=storage.artifact_digest(model_dir),
        output=task.config.output,
        producer=task.producer,
        eval_texts=texts,
        eval_source=source,
        calibration=calibration,
    )


def run(task_config: Path) -> Result:
    plan = check(task_config)
    try:
        return quantize(plan)
    except (BadInputError, TransientError):
        raise
    except Exception as exc:
        import torch

        reason = "OutOfMemory" if isinstance(exc, torch.OutOfMemoryError) else "QuantizationFailed"
        raise TransientError(reason, f"{type(exc).__name__}: {exc}") from exc


def calibration_windows(tokenizer: Any, texts: list[str], samples: int, length: int) -> Any:
    """``samples`` windows of ``length`` tokens cut from the texts joined by EOS (the
    GPTQ paper's random-segment recipe, here in order so a rerun is identical)."""
    import torch

    ids: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        if len(ids) >= samples * length:
            break
    count = min(samples, len(ids) // length)
    if count == 0:
        if len(ids) < 2:
            raise BadInputError("EmptyDataset", "calibration data holds fewer than 2 tokens")
        return torch.tensor([ids])
    return torch.tensor(ids[: count * length]).view(count, length)


def _gptq(plan: Plan, fp: Any, q: Any, tokenizer: Any, *, targets: list[str], size: int) -> int:
    """Replace the round-to-nearest integers of ``q`` with GPTQ's; returns windows used."""
    import torch

    from modelsmith_runtime.quantize import gptq

    if plan.calibration is None or plan.spec.calibration is None:
        raise BadInputError("InvalidSpec", "method gptq needs calibration data")
    length = hfmodel.max_tokens(fp, EVAL_TOKENS)
    windows = calibration_windows(
        tokenizer, plan.calibration, plan.spec.calibration.samples, length
    ).to(next(fp.parameters()).device)
    layers = {name: fp.get_submodule(name) for name in targets}
    hessians = gptq.collect_hessians(fp, layers, windows)
    for name in targets:
        module = q.get_submodule(name)
        result = gptq.quantize_weight(layers[name].weight, hessians.pop(name), size)
        tensor = gptq.to_torchao(result, size, module.weight.dtype)
        module.weight = torch.nn.Parameter(tensor, requires_grad=False)
    return len(windows)


PROMETHEUS_HELP = {
    "step": "Phases done: evaluate, quantize, evaluate again, publish.",
    "total_steps": "Phases in the whole run.",
    "perplexity_before": "Eval perplexity of the model before quantization.",
    "perplexity_after": "Eval perplexity of the quantized model.",
    "perplexity_increase_percent": "The increase the quality gate bounds.",
    "quantized_modules": "Linear layers that were quantized.",
}
PHASES = 4


class _Telemetry:
    """Phases as progress steps: the operator's ETA and the gauges move per phase."""

    def __init__(self) -> None:
        self.gauges = Gauges("modelsmith_quantize_", PROMETHEUS_HELP)
        self.reporter = ProgressReporter()
        self.gauges.set({"total_steps": float(PHASES), "step": 0.0})

    def phase_done(self, step: int, **values: float) -> None:
        self.gauges.set({"step": float(step), **values})
        self.reporter.report(step, PHASES, force=True)


def quantize(plan: Plan) -> Result:
    telemetry = _Telemetry()
    try:
        return _quantize(plan, telemetry)
    finally:
        telemetry.gauges.close()


def _quantize(plan: Plan, telemetry: _Telemetry) -> Result:
    import torch
    from torchao.utils import TorchAOBaseTensor
    from transformers import TorchAoConfig

    hfmodel.quiet_transformers()
    spec = plan.spec
    device = hfmodel.pick_device()
    onnx_export.preflight(spec.export, device.type == "cuda")
    choice = methods.choose(spec, device)
    tokenizer = hfmodel.load_tokenizer(plan.model_dir)
    fp = hfmodel.load_model(plan.model_dir, device, dtype=choice.dtype)
    if spec.export is not None:
        onnx_export.check_dtype(fp)
    limit = hfmodel.max_tokens(fp, EVAL_TOKENS)
    nll, tokens = hfmodel.mean_nll(fp, tokenizer, plan.eval_texts, limit)
    before = math.exp(nll)
    telemetry.phase_done(1, perplexity_before=before)
    skip, targets = methods.skip_list(fp, spec, choice)
    quantization = TorchAoConfig(choice.config, modules_to_not_convert=skip)
    q = hfmodel.load_model(
        plan.model_dir, device, dtype=choice.dtype, quantization_config=quantization
    )
    windows = 0
    if spec.method == QuantMethod.GPTQ:
        windows = _gptq(plan, fp, q, tokenizer, targets=targets, size=methods.group_size(spec))
    del fp
    quantized = [
        name
        for name, m in q.named_modules()
        if isinstance(m, torch.nn.Linear) and isinstance(m.weight, TorchAOBaseTensor)
    ]
    telemetry.phase_done(2, quantized_modules=float(len(quantized)))
    after = math.exp(hfmodel.mean_nll(q, tokenizer, plan.eval_texts, limit)[0])
    increase = (after - before) / before * 100
    telemetry.phase_done(3, perplexity_after=after, perplexity_increase_percent=increase)
    bound = spec.quality_gate.max_perplexity_increase_percent
    log.info(
        "%s: %d linear layers quantized; perplexity %.4f -> %.4f (%+.4f%%, bound %s%%) on %d "
        "tokens of %s",
        spec.method.value,
        len(quantized),
        before,
        after,
        increase,
        bound,
        tokens,
        plan.eval_source,
    )
    if not math.isfinite(after) or increase > bound:
        raise BadInputError(
            "QualityGateFailed",
            f"{spec.method.value} raised perplexity by {increase:.4f}% ({before:.4f} -> "
            f"{after:.4f} on {tokens} tokens of {plan.eval_source}), more than the "
            f"qualityGate.maxPerplexityIncreasePercent {bound}%; nothing was published",
        )
    meta = {
        "kind": "QuantizeJob",
        "method": spec.method.value,
        "torchaoConfig": type(choice.config).__name__,
        "model": {"uri": plan.model_uri, "digest": plan.model_digest},
    }
    with storage.publish(plan.output, meta, producer=plan.producer, version=spec.version) as (
        staging,
        published,
    ):
        hfmodel.save(q, tokenizer, staging)
        size_after = hfmodel.weights_size(staging)
        exported = onnx_export.export(q, tokenizer, spec.export, staging) if spec.export else {}
    telemetry.phase_done(4)
    metrics = {
        "perplexity_before": before,
        "perplexity_after": after,
        "perplexity_increase_percent": increase,
        "size_bytes_before": float(hfmodel.weights_size(plan.model_dir)),
        "size_bytes_after": float(size_after),
        "bits": float(choice.bits),
        "quantized_modules": float(len(quantized)),
        "eval_tokens": float(tokens),
        **exported,
    }
    if choice.group_size:
        metrics["group_size"] = float(choice.group_size)
        metrics["packed_int4"] = float(choice.packed_int4)
    if windows:
        metrics["calibration_windows"] = float(windows)
    return Result(
        uri=published.uri,
        digest=published.digest,
        size_bytes=published.size_bytes,
        version=published.version,
        metrics=metrics,
    )
