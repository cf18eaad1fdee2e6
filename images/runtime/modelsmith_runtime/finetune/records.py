"""Fine-tuning examples from jsonl, checked line by line before any model is loaded.

Two formats, as the FineTune spec names them:

- instruction: ``{"instruction", "input"?, "output"}`` (Alpaca) or ``{"prompt",
  "completion"}`` (also ``"response"``): one prompt, one response.
- chat: ``{"messages": [{"role", "content"}, ...]}`` (the OpenAI / TRL shape), with at
  least one assistant turn, rendered later with the tokenizer's chat template.

Unlike a pretraining corpus, where a few broken documents are noise to drop, a
fine-tuning set is curated: a broken line is a bug in the data, so the run fails and
says where (file:line), listing the first few offenders.

The dataset URI names one file or a directory. A directory must be a published
artifact (completion marker) like every other input; a single file is taken as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelsmith.api.finetune import DatasetFormat
from modelsmith_runtime import storage
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.uris import local_path, open_fs

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json")
ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_REPORTED = 5


@dataclass(frozen=True)
class Prompted:
    """An instruction example: the loss covers ``response`` only."""

    where: str
    prompt: str
    response: str


@dataclass(frozen=True)
class Chat:
    """A conversation: the loss covers the assistant turns only."""

    where: str
    messages: tuple[dict[str, str], ...]


Example = Prompted | Chat


def dataset_files(uri: str, what: str, suffixes: tuple[str, ...] = SUFFIXES) -> list[str]:
    """The data files a URI names: the file itself, or a published directory's files."""
    local = local_path(uri)
    fs, root = open_fs(uri)
    if not fs.exists(root):
        raise BadInputError("MissingArtifact", f"{what}: {uri} does not exist")
    if not fs.isdir(root):
        return [root if local is not None else fs.unstrip_protocol(root)]
    directory = storage.open_artifact(uri, what)  # refuses a half-written one
    files = sorted(
        str(p)
        for p in directory.rglob("*")
        if p.is_file()
        and p.name.endswith(suffixes)
        and not any(part.startswith((".", "_")) for part in p.relative_to(directory).parts)
    )
    if not files:
        raise BadInputError("EmptyDataset", f"{what}: {uri} holds no {'/'.join(suffixes)} files")
    return files


def jsonl_lines(path: str) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed value or the parse error) for each non-blank line."""
    fs, where = open_fs(path)
    with fs.open(where, "rb", compression="infer") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                yield where, json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                yield where, ValueError(f"not JSON ({exc})")


def _string(record: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string")
    return value


def parse_instruction(where: str, record: Any) -> Prompted:
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "instruction" in record:
        prompt = _string(record, "instruction")
        extra = _string(record, "input", required=False)
        body = f"{prompt}\n\n{extra}" if extra.strip() else prompt
        prompt = f"### Instruction:\n{body}\n\n### Response:\n"
        response = _string(record, "output")
    elif "prompt" in record:
        prompt = _string(record, "prompt")
        key = "completion" if "completion" in record else "response"
        response = _string(record, key)
    else:
        raise ValueError('needs "instruction" and "output", or "prompt" and "completion"')
    if not response.strip():
        raise ValueError("the response is empty: nothing to learn")
    return Prompted(where, prompt, response)


def parse_chat(where: str, record: Any) -> Chat:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError('needs a non-empty "messages" list')
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
        raise ValueError("no assistant message: nothing to learn")
    return Chat(where, tuple(clean))


def read_examples(uri: str, fmt: DatasetFormat) -> list[Example]:
    """Every example of the dataset, or BadInputError naming the broken lines."""
    parse = parse_chat if fmt == DatasetFormat.CHAT else parse_instruction
    examples: list[Example] = []
    bad: list[str] = []
    bad_count = 0
    for path in dataset_files(uri, "dataset"):
        for where, value in jsonl_lines(path):
            try:
                if isinstance(value, ValueError):
                    raise value
                examples.append(parse(where, value))
            except ValueError as exc:
                bad_count += 1
                if len(bad) < MAX_REPORTED:
                    bad.append(f"{where}: {exc}")
    if bad:
        raise BadInputError(
            "CorruptInput",
            f"dataset {uri}: {bad_count} invalid {fmt.value} record(s); " + "; ".join(bad),
        )
    if not examples:
        raise BadInputError("EmptyDataset", f"dataset {uri} holds no examples")
    return examples
