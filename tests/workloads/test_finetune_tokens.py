"""The loss mask and the eval split, in process: what the model learns from an example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelsmith.api.finetune import DatasetFormat
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.finetune.loop import split
from modelsmith_runtime.finetune.records import Chat, Prompted, read_examples
from modelsmith_runtime.finetune.tokens import IGNORE, Tokenized, tokenize, tokenize_all
from tests.workloads.tiny_model import tiny_model, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from modelsmith_runtime import hfmodel

    return hfmodel.load_tokenizer(Path(tiny_model(tmp_path_factory)))


def _learned(tokenizer: Any, t: Tokenized) -> str:
    ids = [i for i, label in zip(t.input_ids, t.labels, strict=True) if label != IGNORE]
    return str(tokenizer.decode(ids))


def test_instruction_learns_the_response_and_eos_only(tokenizer: Any) -> None:
    example = Prompted("x:1", "### Instruction:\nWho?\n\n### Response:\n", "The cat.")
    t = tokenize(tokenizer, example, 128)
    assert _learned(tokenizer, t) == "The cat.<|endoftext|>"
    prompt = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
    assert t.input_ids[: len(prompt)] == prompt
    assert t.labels[: len(prompt)] == [IGNORE] * len(prompt)


def test_chat_learns_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    messages = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who sees the ball?"},
        {"role": "assistant", "content": "The cat."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "At home."},
    )
    t = tokenize(tokenizer, Chat("x:1", messages), 256)
    assert _learned(tokenizer, t) == "The cat.<|im_end|>\nAt home.<|im_end|>\n"
    whole = tokenizer.apply_chat_template(list(messages), tokenize=False)
    assert tokenizer.decode(t.input_ids) == whole


def test_the_default_template_splits_turns_and_ends_them_with_eos(tokenizer: Any) -> None:
    """What a base model without a chat template (one pretrained here) is tuned with."""
    from copy import deepcopy

    from modelsmith_runtime.chattemplate import DEFAULT_CHAT_TEMPLATE

    bare = deepcopy(tokenizer)
    bare.chat_template = DEFAULT_CHAT_TEMPLATE
    messages = (
        {"role": "user", "content": "Who sees the ball?"},
        {"role": "assistant", "content": "The cat."},
        {"role": "user", "content": "Where?"},
        {"role": "assistant", "content": "At home."},
    )
    t = tokenize(bare, Chat("x:1", messages), 256)
    assert _learned(bare, t) == " The cat.<|endoftext|> At home.<|endoftext|>"
    assert bare.decode(t.input_ids) == (
        "user: Who sees the ball?\nassistant: The cat.<|endoftext|>\n"
        "user: Where?\nassistant: At home.<|endoftext|>"
    )
    prompt = bare.apply_chat_template([messages[0]], tokenize=False, add_generation_prompt=True)
    assert prompt == "user: Who sees the ball?\nassistant:", "what the server asks"


def test_examples_whose_response_is_cut_off_are_dropped(tokenizer: Any) -> None:
    long_prompt = Prompted("x:1", "word " * 200, "answer")
    short = Prompted("x:2", "Q: ", "answer")
    kept = tokenize_all(tokenizer, [long_prompt, short], 32)
    assert len(kept) == 1 and len(kept[0].input_ids) <= 32
    with pytest.raises(BadInputError, match="sequence length"):
        tokenize_all(tokenizer, [long_prompt], 32)


def test_split_is_deterministic_and_keeps_both_sides() -> None:
    items = [Tokenized([i, i], [i, i]) for i in range(20)]
    train, held = split(items, 0.25)
    assert len(held) == 5 and len(train) == 15
    assert split(items, 0.25) == (train, held)
    assert {t.input_ids[0] for t in train + held} == set(range(20))
    assert [len(side) for side in split(items[:2], 0.01)] == [1, 1]  # at least one each
    assert [len(side) for side in split(items[:1], 0.5)] == [1, 0]  # one cannot be split
    assert split(items, 0.0) == (items, [])


def test_prompt_completion_and_alpaca_input_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "P", "completion": "C"},
            {"prompt": "P", "response": "R"},
            {"instruction": "I", "input": "ctx", "output": "O"},
        ],
    )
    a, b, c = read_examples(str(path), DatasetFormat.INSTRUCTION)
    assert (a.prompt, a.response) == ("P", "C")
    assert (b.prompt, b.response) == ("P", "R")
    assert isinstance(c, Prompted)
    assert c.prompt == "### Instruction:\nI\n\nctx\n\n### Response:\n" and c.response == "O"
    assert c.where == f"{path}:3"
