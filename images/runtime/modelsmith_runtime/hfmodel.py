"""Models in the Hugging Face layout: open, load, score and save them the same way everywhere.

The FineTune and QuantizeJob workloads share this so that "the model" means one thing:
a published artifact directory that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` read as they are, which is also what vLLM and KServe
load. `open_model` is cheap (no torch) so that a workload refuses a missing,
half-written or wrong input before it spends seconds importing torch; everything else
imports torch and transformers lazily for the same reason.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime import storage
from modelsmith_runtime.errors import BadInputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
EVAL_BATCH = 8


def open_model(uri: str, what: str) -> Path:
    """A published, complete model artifact as a local directory, or BadInputError.

    An adapter (what a FineTune publishes with method lora or qlora and no
    mergeAdapter, or with prefix or adapter) is refused with a message that says how to
    get a plain model, since nothing downstream can use the adapter alone.
    """
    path = storage.open_artifact(uri, what)
    if not (path / "config.json").is_file():
        adapter = _adapter_kind(path)
        if adapter == "LORA":
            raise BadInputError(
                "InvalidModel",
                f"{what} at {uri} is a LoRA adapter, not a model: "
                "set mergeAdapter: true on the FineTune that produced it",
            )
        if adapter is not None:
            raise BadInputError(
                "InvalidModel",
                f"{what} at {uri} is a {adapter} adapter, not a model, and it cannot be "
                "merged into plain weights: fine-tune with method full, distill, or lora "
                "with mergeAdapter: true to get a model this can read",
            )
        raise BadInputError(
            "InvalidModel", f"{what} at {uri} has no config.json: not a Hugging Face model"
        )
    try:
        json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise BadInputError("InvalidModel", f"{what} at {uri}: config.json: {exc}") from exc
    return path


def _adapter_kind(path: Path) -> str | None:
    """Which FineTune adapter a model-less artifact holds: peft's type, "bottleneck"."""
    if (path / "bottleneck_adapter.json").is_file():
        return "bottleneck"
    config = path / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        kind = json.loads(config.read_text()).get("peft_type")
    except (ValueError, AttributeError):
        kind = None
    return str(kind) if kind else "peft"


def pick_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def quiet_transformers() -> None:
    """Progress bars and advisory warnings are noise in a pod's log."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(path: Path) -> Any:
    """The artifact's tokenizer; a missing pad token borrows eos (batched scoring pads)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises anything from OSError to KeyError
        raise BadInputError("InvalidModel", f"{path}: cannot load the tokenizer: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:
        raise BadInputError("InvalidModel", f"{path}: the tokenizer has no eos or pad token")
    return tokenizer


def load_model(
    path: Path,
    device: torch.device,
    *,
    dtype: torch.dtype | str = "auto",
    quantization_config: Any = None,
) -> Any:
    """A causal LM from the artifact, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map=device, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError("InvalidModel", f"{path}: not a causal LM: {exc}") from exc
    return model.eval()


def max_tokens(model: Any, limit: int) -> int:
    positions = getattr(model.config, "max_position_embeddings", None) or limit
    return min(limit, int(positions))


def mean_nll(model: Any, tokenizer: Any, texts: Sequence[str], limit: int) -> tuple[float, int]:
    """Mean negative log-likelihood per predicted token over all texts, and the count.

    Token-weighted, so the perplexity is the corpus's (exp of this), not an average of
    per-text perplexities that short texts would dominate. Each text is scored on its
    first ``limit`` tokens; a text of one token predicts nothing and adds nothing.
    """
    import torch

    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(texts), EVAL_BATCH):
        enc = tokenizer(
            list(texts[start : start + EVAL_BATCH]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=limit,
        ).to(device)
        with torch.inference_mode():
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        mask = enc.attention_mask[:, 1:].float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), enc.input_ids[:, 1:], reduction="none"
        )
        total += float((nll * mask).sum())
        count += int(mask.sum())
    if count == 0:
        raise BadInputError("EmptyEvalSet", "no eval text is longer than one token")
    return total / count, count


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], limit: int = 512) -> float:
    nll, _ = mean_nll(model, tokenizer, texts, max_tokens(model, limit))
    return math.exp(nll)


def save(model: Any, tokenizer: Any, staging: Path) -> None:
    """The Hugging Face layout: config, safetensors weights, generation config, tokenizer."""
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))


def weights_size(path: Path) -> int:
    """Bytes of weight files only: tokenizer and config do not change with quantization."""
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and p.name != COMPLETION_MARKER and p.name.endswith(WEIGHT_SUFFIXES)
    )
