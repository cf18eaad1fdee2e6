"""Examples to token ids with a loss mask: the model learns the responses, not the prompts.

An example becomes a list of (text, learn) segments, each tokenized on its own and
concatenated, and labels are -100 (ignored by the loss) on every token of a segment
not learned. Tokenizing the prompt on its own is also exactly what happens at
inference, where the prompt arrives alone and the model continues it.

Chat examples are rendered with the tokenizer's own chat template, turn by turn: the
text the template renders for the conversation up to an assistant turn (with the
generation prompt) is the prompt, and what the full render adds after it is the
response, end-of-turn token included, so the model learns to stop. Templates whose
render of a prefix is not a prefix of the longer render cannot be split this way;
those fail clearly instead of training on a wrong mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.finetune.records import Chat, Example, Prompted

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def learned(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _render(tokenizer: Any, messages: list[dict[str, str]], *, prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return str(text)


def chat_segments(tokenizer: Any, example: Chat) -> list[tuple[str, bool]]:
    messages = list(example.messages)
    segments: list[tuple[str, bool]] = []
    done = ""
    try:
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = _render(tokenizer, messages[:i], prompt=True)
            full = _render(tokenizer, messages[: i + 1], prompt=False)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise BadInputError(
                    "UnsupportedChatTemplate",
                    f"{example.where}: the tokenizer's chat template does not render a "
                    "conversation's prefix as a prefix of the whole, so the assistant "
                    "turns cannot be told apart for the loss mask",
                )
            segments += [(prefix[len(done) :], False), (full[len(prefix) :], True)]
            done = full
        rest = _render(tokenizer, messages, prompt=False)
    except BadInputError:
        raise
    except Exception as exc:  # jinja2 TemplateError, or a template's raise_exception
        raise BadInputError(
            "InvalidChat", f"{example.where}: the chat template refused it: {exc}"
        ) from exc
    if rest.startswith(done) and len(rest) > len(done):
        segments.append((rest[len(done) :], False))
    return [(text, learn) for text, learn in segments if text]


def segments(tokenizer: Any, example: Example) -> list[tuple[str, bool]]:
    if isinstance(example, Prompted):
        return [(example.prompt, False), (example.response + tokenizer.eos_token, True)]
    return chat_segments(tokenizer, example)


def tokenize(tokenizer: Any, example: Example, max_length: int) -> Tokenized:
    """Token ids and labels, cut to ``max_length`` tokens.

    The first segment of an instruction example gets the tokenizer's special tokens
    (BOS, where it adds one); a chat template writes its own.
    """
    ids: list[int] = []
    labels: list[int] = []
    for n, (text, learn) in enumerate(segments(tokenizer, example)):
        special = n == 0 and isinstance(example, Prompted)
        piece = tokenizer(text, add_special_tokens=special)["input_ids"]
        ids += piece
        labels += piece if learn else [IGNORE] * len(piece)
    return Tokenized(ids[:max_length], labels[:max_length])


def tokenize_all(tokenizer: Any, examples: list[Example], max_length: int) -> list[Tokenized]:
    """Every example that still has a response token within ``max_length``."""
    out = [tokenize(tokenizer, example, max_length) for example in examples]
    kept = [t for t in out if t.learned > 0]
    if len(kept) < len(out):
        log.warning(
            "%d of %d examples dropped: their response starts beyond %d tokens",
            len(out) - len(kept),
            len(out),
            max_length,
        )
    if not kept:
        raise BadInputError(
            "EmptyDataset",
            f"every example's response starts beyond the {max_length}-token sequence length",
        )
    return kept
