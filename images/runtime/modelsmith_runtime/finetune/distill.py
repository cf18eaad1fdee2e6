"""Knowledge distillation (Hinton et al. 2015): the student learns the teacher's softened
next-token distribution on the dataset's response tokens, beside the hard labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE

summed over response tokens like the plain loss (`loop`), so a step weighs its tokens
equally however it is cut into micro-batches. T^2 keeps the soft term's gradient on the
scale of the hard one's as T grows (Hinton's argument).

The distributions are compared token id by token id, so teacher and student must share
the tokenizer: the same vocabulary (every token string with the same id). `check_vocab`
compares them before torch is imported. A model whose output layer is padded past the
vocabulary (a common alignment trick) is compared on the vocabulary's ids only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelsmith.api.finetune import Distill
from modelsmith_runtime.errors import BadInputError

if TYPE_CHECKING:
    import torch

TOKENIZER = "tokenizer.json"


def _vocab(directory: Path) -> dict[str, int]:
    """The token -> id map, from tokenizer.json when there is one (no torch), else
    through transformers (slow tokenizers: sentencepiece, vocab.json)."""
    if (directory / TOKENIZER).is_file():
        from tokenizers import Tokenizer

        try:
            vocab = Tokenizer.from_file(str(directory / TOKENIZER)).get_vocab(
                with_added_tokens=True
            )
        except Exception as exc:  # the Rust side raises plain Exception
            raise BadInputError("InvalidModel", f"{directory}/{TOKENIZER}: {exc}") from exc
        return dict(vocab)
    from modelsmith_runtime import hfmodel

    return dict(hfmodel.load_tokenizer(directory).get_vocab())


def check_vocab(student: Path, teacher: Path) -> int:
    """The shared vocabulary's size, or BadInputError saying how the two differ."""
    mine, theirs = _vocab(student), _vocab(teacher)
    if mine != theirs:
        only_student = sorted(set(mine) - set(theirs))[:5]
        moved = sorted(t for t in set(mine) & set(theirs) if mine[t] != theirs[t])[:5]
        raise BadInputError(
            "IncompatibleTeacher",
            f"distill.teacher uses another tokenizer than baseModel (the student): "
            f"{len(mine)} vs {len(theirs)} tokens; e.g. only the student's: {only_student}, "
            f"different ids: {moved}. Distillation compares the two models' distributions "
            "token id by token id, so both need the same vocabulary",
        )
    for name, directory in (("baseModel", student), ("distill.teacher", teacher)):
        size = json.loads((directory / "config.json").read_text()).get("vocab_size")
        if isinstance(size, int) and size < len(mine):
            raise BadInputError(
                "InvalidModel",
                f"{name}: config.json vocab_size {size} is smaller than its tokenizer's "
                f"{len(mine)} tokens",
            )
    return len(mine)


class DistillLoss:
    """The loop's loss (``(model, batch) -> summed loss``) with the teacher beside it."""

    def __init__(self, teacher: Any, temperature: float, alpha: float, vocab: int) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.vocab = vocab

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual name

        from modelsmith_runtime.finetune.tokens import IGNORE

        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        student = model(**inputs).logits[:, :-1].float()
        with torch.no_grad():
            teacher = self.teacher(**inputs).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        hard = F.cross_entropy(
            student.transpose(1, 2), labels, ignore_index=IGNORE, reduction="sum"
        )
        learned = labels != IGNORE
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student[learned][:, : self.vocab] / t, dim=-1),
            F.log_softmax(teacher[learned][:, : self.vocab] / t, dim=-1),
            log_target=True,
            reduction="sum",
        )
        return self.alpha * t * t * soft + (1 - self.alpha) * hard


def objective(
    directory: Path, settings: Distill, vocab: int, device: torch.device, dtype: torch.dtype
) -> DistillLoss:
    """The teacher, loaded frozen (on a GPU in the run's precision, fp32 on the CPU),
    inside the loss it serves."""
    from modelsmith_runtime import hfmodel

    teacher = hfmodel.load_model(directory, device, dtype=dtype)
    teacher.requires_grad_(False)
    teacher.config.use_cache = False
    return DistillLoss(teacher, settings.temperature, settings.alpha, vocab)
