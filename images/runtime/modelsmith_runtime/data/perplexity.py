"""Perplexity of documents under a small reference language model (the CCNet idea).

torch and transformers are imported only here, and only when a spec names a
reference model, so the data image runs without them otherwise. A document is scored
on its first ``max_tokens`` tokens: enough to tell prose from boilerplate or garbage,
and it bounds the cost of very long documents.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from modelsmith_runtime.errors import BadInputError

log = logging.getLogger(__name__)

MAX_TOKENS = 512
BATCH_SIZE = 8


class PerplexityScorer:
    def __init__(self, model_dir: Path, max_tokens: int = MAX_TOKENS) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise BadInputError(
                "Unsupported",
                "filters.perplexity needs torch and transformers, which this image lacks",
            ) from exc
        self._torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
            model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir))
        except (OSError, ValueError, KeyError) as exc:
            raise BadInputError(
                "InvalidReferenceModel",
                f"{model_dir} is not a causal LM in the Hugging Face layout: {exc}",
            ) from exc
        self.model: Any = model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.pad_token_id is None:
            raise BadInputError("InvalidReferenceModel", f"{model_dir}: tokenizer has no eos token")
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_tokens
        self.max_tokens = min(max_tokens, int(limit))
        log.info(
            "perplexity: %s on %s, %d tokens per document", model_dir, self.device, self.max_tokens
        )

    def score(self, texts: list[str]) -> list[float]:
        """Perplexity per text; one of fewer than two tokens cannot be scored: 1.0, kept."""
        out: list[float] = []
        for start in range(0, len(texts), BATCH_SIZE):
            out.extend(self._batch(texts[start : start + BATCH_SIZE]))
        return out

    def _batch(self, texts: list[str]) -> list[float]:
        torch = self._torch
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            add_special_tokens=False,
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        targets = enc.input_ids[:, 1:]
        mask = enc.attention_mask[:, 1:].float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, reduction="none"
        )
        counts = mask.sum(dim=1)
        mean = (nll * mask).sum(dim=1) / counts.clamp(min=1)
        return [
            math.exp(float(m)) if float(c) > 0 else 1.0
            for m, c in zip(mean.cpu(), counts.cpu(), strict=True)
        ]
