"""The decoder, built from transformers' own classes so the output needs no conversion.

Dense runs are LlamaForCausalLM and mixture-of-experts runs MixtralForCausalLM: both
are what vLLM, TGI and KServe's runtimes load natively. The MoE's load-balancing loss
is transformers' own (Switch-style, `output_router_logits`), added to the language
model loss inside the forward pass with `router_aux_loss_coef`. Training swaps Mixtral's
sparse block for routing.py's, which adds the expert capacity and the load counts and
keeps every parameter (and so checkpoints and the export) as Mixtral has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from modelsmith.api.pretrain import Architecture, ArchitectureType
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.train import routing
from modelsmith_runtime.train.incremental import MIXTRAL_TOP_K, default_intermediate, load_model


@dataclass(frozen=True)
class SpecialTokens:
    bos: int | None
    eos: int | None
    pad: int | None


def special_tokens(tokenizer_dir: Path) -> SpecialTokens:
    """Read through AutoTokenizer: if it cannot load the tokenizer, neither can users."""
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:
        raise BadInputError("InvalidTokenizer", f"{tokenizer_dir}: {exc}") from exc
    return SpecialTokens(tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def model_config(
    arch: Architecture, vocab_size: int, sequence_length: int, tokens: SpecialTokens
) -> PretrainedConfig:
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size or default_intermediate(arch.hidden_size),
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads or arch.heads,
        "max_position_embeddings": sequence_length,
        "bos_token_id": tokens.bos,
        "eos_token_id": tokens.eos,
        "pad_token_id": tokens.pad,
        "tie_word_embeddings": False,
    }
    if arch.type == ArchitectureType.DENSE:
        return LlamaConfig(**common)
    moe: dict[str, Any] = {
        "num_local_experts": arch.experts,
        "num_experts_per_tok": arch.top_k or MIXTRAL_TOP_K,
        "output_router_logits": True,
    }
    if arch.aux_loss_coef is not None:
        moe["router_aux_loss_coef"] = arch.aux_loss_coef
    return MixtralConfig(**common, **moe)


def model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    return MixtralForCausalLM if isinstance(config, MixtralConfig) else LlamaForCausalLM


def build_model(
    config: PretrainedConfig,
    device: torch.device,
    seed: int,
    *,
    init_dir: Path | None = None,
    capacity_factor: float | None = None,
) -> PreTrainedModel:
    """The training model, identical on every rank.

    Random init (same seed everywhere) directly on the device, or ``init_dir``'s
    weights (spec.initFrom). MoE blocks route through `routing.RoutedMoeBlock`, with
    ``capacity_factor`` or dropless; the parameters and their names stay Mixtral's,
    and `routing.meter` finds what the blocks count.
    """
    torch.manual_seed(seed)
    if init_dir is not None:
        model: PreTrainedModel = load_model(model_class(config), config, init_dir).to(device)
    else:
        with device:
            model = model_class(config)(config)
    model.config.use_cache = False
    routing.install(model, capacity_factor)
    model.train()
    return model


def parameter_counts(config: PretrainedConfig) -> tuple[int, int]:
    """(total, active per token): MoE tokens only run top-k of the experts."""
    with torch.device("meta"):
        model = model_class(config)(config)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    if isinstance(config, MixtralConfig):
        active = total - experts + experts * config.num_experts_per_tok // config.num_local_experts
    else:
        active = total
    return total, active


def flops_per_token(config: PretrainedConfig, sequence_length: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6 x active non-embedding parameters
    plus attention's 12 x layers x hidden x sequence (forward and backward)."""
    _, active = parameter_counts(config)
    embedding = config.vocab_size * config.hidden_size
    attention = 12.0 * config.num_hidden_layers * config.hidden_size * sequence_length
    return float(6.0 * (active - embedding) + attention)


def export(
    state_dict: dict[str, torch.Tensor],
    config: PretrainedConfig,
    dtype: torch.dtype,
    dest: Path,
) -> None:
    """Write the Hugging Face layout from a full state dict (gathered from any wrapper).

    A fresh model on the meta device takes the tensors by reference, so the export
    costs no second random init; the class name saved into config.json is the plain
    transformers one even when the training model was wrapped by FSDP.
    """
    config = config.__class__.from_dict(config.to_dict())
    config.use_cache = True
    if isinstance(config, MixtralConfig):
        config.output_router_logits = False  # an inference server has no use for them
    with torch.device("meta"):
        model = model_class(config)(config)
    model.load_state_dict(state_dict, assign=True, strict=True)
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(str(dest))
