"""From one request's generated token ids to the text it may show, token by token.

Decoding: a token is decoded together with a few tokens before it and only the new
suffix is kept (the prefix/read offsets of TGI and vLLM), because many tokenizers
render a token differently at the start of a string (SentencePiece's leading space)
and a byte-level token can be half a UTF-8 character until the next one arrives
(held back while the text ends in U+FFFD). Each step decodes a few tokens, not the
whole output.

Stop strings and blocked phrases: the output must never contain either, also not in
a stream, where a client has shown every chunk it got. So the last (longest phrase
- 1) characters are held back until the next token proves they do not start one;
a match cuts the text before it and ends the request (finish_reason "stop" for a
stop string, "content_filter" for a blocked phrase).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STOP = "stop"
CONTENT_FILTER = "content_filter"


@dataclass(frozen=True)
class Blocklist:
    """The output filter's phrases as one case-insensitive alternation, compiled once;
    a regex rather than lower(), whose result can be longer than its input and would
    put a match's span off the original text."""

    pattern: re.Pattern[str]
    longest: int

    @classmethod
    def of(cls, phrases: Sequence[str]) -> Blocklist | None:
        if not phrases:
            return None
        pattern = re.compile("|".join(re.escape(p) for p in phrases), re.IGNORECASE)
        return cls(pattern, max(len(p) for p in phrases))


class TextStream:
    def __init__(self, tokenizer: Any, stop: Sequence[str], blocklist: Blocklist | None) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._blocklist = blocklist.pattern if blocklist else None
        longest = max([len(s) for s in self._stop] + [blocklist.longest if blocklist else 1])
        self._hold = longest - 1
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""
        self._emitted = 0
        self._scanned = 0

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def _extend(self, final: bool) -> None:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)

    def _match(self) -> tuple[int, str] | None:
        """The earliest stop string or blocked phrase not yet scanned, and its reason."""
        start = max(0, self._scanned - self._hold)
        found: tuple[int, str] | None = None
        for stop in self._stop:
            at = self.text.find(stop, start)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, STOP)
        if self._blocklist is not None:
            hit = self._blocklist.search(self.text, start)
            if hit is not None and (found is None or hit.start() < found[0]):
                found = (hit.start(), CONTENT_FILTER)
        self._scanned = len(self.text)
        return found

    def _cut(self, end: int) -> str:
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def push(self, token: int) -> tuple[str, str | None]:
        """The text this token lets the client see, and a finish reason on a match."""
        self._ids.append(token)
        self._extend(final=False)
        found = self._match()
        if found is not None:
            self.text = self.text[: found[0]]
            return self._cut(found[0]), found[1]
        return self._cut(len(self.text) - self._hold), None

    def finish(self) -> tuple[str, str | None]:
        """The held-back rest at the end of generation; a reason if it held a match."""
        self._extend(final=True)
        found = self._match()
        if found is not None:
            self.text = self.text[: found[0]]
            return self._cut(found[0]), found[1]
        return self._cut(len(self.text)), None
