"""Text for the quality gate's perplexity and for GPTQ's calibration.

An input is jsonl or plain text, one file or a published directory of them. A jsonl
record gives its text by the first shape it has: ``text``; ``prompt`` + ``completion``
(or ``response``); ``instruction`` + ``input`` + ``output``; ``messages`` (contents
joined), so a FineTune's own dataset can serve as the eval set. A plain-text file gives
one text per non-blank line (wikitext and most dumps keep a paragraph per line).

With neither an eval dataset nor calibration data, the gate scores `DEFAULT_EVAL_TEXT`
(general English prose) and logs that it did: a perplexity gate on text unlike the
model's domain is weak, but it still catches a quantization that broke the model.
"""

from __future__ import annotations

import logging
from typing import Any

from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.finetune.records import dataset_files, jsonl_lines
from modelsmith_runtime.uris import open_fs

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".txt", ".txt.gz", ".txt.zst")
MAX_TEXTS = 256
"""The gate scores at most this many texts (in file order): enough for a stable
perplexity, and it bounds the gate's cost on a large eval set."""

DEFAULT_EVAL_TEXT = (
    "The river runs through the middle of the old town, and on warm evenings people "
    "walk along its banks to watch the boats come in.",
    "She opened the letter slowly, read it twice, and then put it back in the drawer "
    "without saying a word to anyone.",
    "Most of the work was done by hand, because the machines that could have helped "
    "were too expensive for a small farm.",
    "When the train finally arrived, the platform was so crowded that many of us had "
    "to wait for the next one.",
    "A good teacher explains the same idea in several ways, so that every student can "
    "find the one that makes sense to them.",
    "The weather changed quickly in the mountains: clear skies in the morning, then "
    "rain and strong wind by the afternoon.",
    "He had always wanted to learn how to cook, so he started with simple recipes and "
    "practised every weekend.",
    "The library stays open late during the exam period, and the reading rooms are "
    "full from early morning until midnight.",
)


def _record_text(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    text = record.get("text")
    if isinstance(text, str):
        return text
    if isinstance(record.get("messages"), list):
        parts = [m.get("content") for m in record["messages"] if isinstance(m, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    keys = (("prompt", "completion"), ("prompt", "response"), ("instruction", "input", "output"))
    for group in keys:
        if group[0] in record:
            parts = [record.get(k) for k in group]
            return "\n".join(p for p in parts if isinstance(p, str) and p)
    return None


def _file_texts(path: str) -> list[str]:
    if ".jsonl" in path or path.endswith(".json"):
        texts = []
        for where, value in jsonl_lines(path):
            text = None if isinstance(value, ValueError) else _record_text(value)
            if text is None:
                raise BadInputError(
                    "CorruptInput",
                    f"{where}: {value if isinstance(value, ValueError) else 'no text'}: "
                    'expected "text", "prompt"/"completion", "instruction"/"output" or '
                    '"messages"',
                )
            texts.append(text)
        return texts
    fs, where = open_fs(path)
    with fs.open(where, "rb", compression="infer") as handle:
        raw: bytes = handle.read()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise BadInputError("CorruptInput", f"{path}: not UTF-8 ({exc})") from exc


def read_texts(uri: str, what: str, limit: int | None = None) -> list[str]:
    """The non-blank texts of an input, in file order, at most ``limit`` of them."""
    texts: list[str] = []
    for path in dataset_files(uri, what, SUFFIXES):
        texts += [t for t in _file_texts(path) if t.strip()]
        if limit is not None and len(texts) >= limit:
            return texts[:limit]
    if not texts:
        raise BadInputError("EmptyDataset", f"{what}: {uri} holds no text")
    return texts


def eval_texts(eval_uri: str | None, calibration_uri: str | None) -> tuple[list[str], str]:
    """The gate's texts and where they came from (for the log and the marker)."""
    if eval_uri:
        return read_texts(eval_uri, "qualityGate.evalDataset", MAX_TEXTS), eval_uri
    if calibration_uri:
        return read_texts(calibration_uri, "calibration.dataset", MAX_TEXTS), calibration_uri
    log.warning("no evalDataset and no calibration data: the gate scores built-in English text")
    return list(DEFAULT_EVAL_TEXT), "builtin:english"
