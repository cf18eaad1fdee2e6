"""The model being fine-tuned, per method, and what is published from it.

- full: every weight trains, in fp32 master weights (mixed precision is autocast's job),
  and the output is a plain model in the spec's precision.
- lora: peft adapters on the named modules of a frozen base. The base stays fp32 on
  CPU (CPU half-precision matmuls are slow and autocast covers the compute) and in the
  spec's precision on a GPU, where its memory is what LoRA exists to save.
- qlora: the same adapters on a base loaded in 4-bit NF4 by bitsandbytes (the QLoRA
  paper's recipe: NF4, double quantization, 16-bit compute on a GPU; fp32 compute on
  the CPU, where bitsandbytes' NF4 backend runs the tests).
- prefix: peft prefix tuning on a frozen base (as lora, and published like an unmerged
  LoRA adapter: peft's layout, loaded with PeftModel.from_pretrained on the base).
- adapter: bottleneck adapters on a frozen base (`bottleneck`, which says how they are
  published and loaded).
- distill: as full (the student's own weights train), against a teacher (`distill`).

full and distill honour spec.freeze (`modelsmith_runtime.freeze`); the other methods
freeze the whole base themselves.

The output is either a plain Hugging Face model (full, distill, or mergeAdapter) or
the adapter alone: lora, qlora and prefix in peft's layout (adapter_config.json,
adapter_model.safetensors) whose base_model_name_or_path is the base artifact's URI,
plus `BASE_POINTER` with that URI and the base's digest, so whoever serves it can fetch
and verify the exact base; a bottleneck adapter in its own layout beside the same
pointer. Prefixes and bottleneck adapters have no merged form (the CRD refuses
mergeAdapter with them).

A QLoRA adapter is merged into a base reloaded in 16/32 bits, not into the 4-bit one:
merging into NF4 weights would round the merged weights to NF4 again.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from modelsmith.api.finetune import Adapter, LoRA, Method, Prefix
from modelsmith.api.pretrain import Precision
from modelsmith_runtime import freeze, hfmodel
from modelsmith_runtime.errors import BadInputError, TransientError
from modelsmith_runtime.finetune import bottleneck
from modelsmith_runtime.finetune.plan import PLAIN, Plan

log = logging.getLogger(__name__)

DTYPES = {
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
    Precision.FP32: torch.float32,
}
BASE_POINTER = "modelsmith_base.json"


def require_qlora_runtime(plan: Plan, device: torch.device) -> None:
    """See `plan`: a GPU that was asked for and is missing is the node's fault."""
    if plan.spec.resources.gpus and device.type != "cuda":
        raise TransientError(
            "GPUUnavailable",
            f"method qlora needs a CUDA GPU; this FineTune asks for resources.gpus: "
            f"{plan.spec.resources.gpus}, but the pod sees none (torch.cuda.is_available() "
            "is false: a driver or device-plugin problem on this node); a retry may land "
            "on a healthy node",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BadInputError(
            "Unsupported", "method qlora needs bitsandbytes, which this image does not have"
        )


def base_dtype(plan: Plan, device: torch.device) -> torch.dtype:
    if plan.spec.method in PLAIN or device.type == "cpu":
        return torch.float32
    return DTYPES[plan.spec.precision]


def _quantization(plan: Plan) -> Any:
    if plan.spec.method != Method.QLORA:
        return None
    from transformers import BitsAndBytesConfig

    compute = DTYPES[plan.spec.precision] if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _lora_config(lora: LoRA) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def _with_adapter(model: Any, lora: LoRA) -> Any:
    from peft import get_peft_model

    try:
        return get_peft_model(model, _lora_config(lora))
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise BadInputError("InvalidSpec", f"lora.targetModules: {exc}") from exc


def _with_prefix(model: Any, prefix: Prefix) -> Any:
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=prefix.virtual_tokens,
        prefix_projection=prefix.projection,
    )
    if prefix.projection_hidden_size is not None:
        config.encoder_hidden_size = prefix.projection_hidden_size
    return get_peft_model(model, config)


def trainable(model: Any) -> tuple[int, int]:
    """(trainable, all) parameters: the adapter's and the base's together for the rest."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def build(plan: Plan, device: torch.device) -> Any:
    """The trainable model: the base, as it is (full, distill) or wrapped per method."""
    if plan.spec.method == Method.QLORA:
        require_qlora_runtime(plan, device)
    torch.manual_seed(0)  # adapter init and dropout: the same run gives the same model
    model = hfmodel.load_model(
        plan.base_dir,
        device,
        dtype=base_dtype(plan, device),
        quantization_config=_quantization(plan),
    )
    model.config.use_cache = False
    if plan.spec.method == Method.QLORA:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    method = plan.spec.method
    if plan.lora is not None:
        model = _with_adapter(model, plan.lora)
    elif method == Method.PREFIX:
        model = _with_prefix(model, plan.spec.prefix or Prefix())
    elif method == Method.ADAPTER:
        bottleneck.attach(model, plan.spec.adapter or Adapter())
    if plan.spec.freeze is not None:
        freeze.apply(model, plan.spec.freeze)
    count, total = trainable(model)
    log.info("%s: %d of %d parameters train (%.3f%%)", method, count, total, 100 * count / total)
    model.train()
    return model


def _merged(plan: Plan, model: Any, device: torch.device) -> Any:
    if plan.spec.method in PLAIN:
        return model
    if plan.spec.method == Method.LORA:
        return model.merge_and_unload()
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    state = get_peft_model_state_dict(model)
    base = hfmodel.load_model(plan.base_dir, device, dtype=DTYPES[plan.spec.precision])
    fresh = _with_adapter(base, plan.lora or LoRA())
    set_peft_model_state_dict(fresh, state)
    return fresh.merge_and_unload()


def export(plan: Plan, model: Any, tokenizer: Any, staging: Path, device: torch.device) -> None:
    """Write the output layout (see the module docstring) into ``staging``."""
    model.eval()
    if plan.merged:
        merged = _merged(plan, model, device).to(DTYPES[plan.spec.precision])
        merged.config.use_cache = True
        hfmodel.save(merged, tokenizer, staging)
        return
    if plan.spec.method == Method.ADAPTER:
        bottleneck.save(model, plan.spec.adapter or Adapter(), plan.base_uri, staging)
    else:
        model.peft_config["default"].base_model_name_or_path = plan.base_uri
        model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    pointer = {"uri": plan.base_uri, "digest": plan.base_digest}
    (staging / BASE_POINTER).write_text(json.dumps(pointer, indent=2) + "\n")
