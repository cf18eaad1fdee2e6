"""Unicode and whitespace clean-up, before any filter or hash sees the text.

Normalizing first is what makes "the same text" mean the same thing everywhere after:
a document typed with a decomposed é, a non-breaking space or trailing blanks is an
exact duplicate of its clean twin, and the length and repetition filters measure
characters a reader would count.

Whitespace collapsing keeps line structure, because the Gopher repetition filter
counts lines: runs of spaces and tabs (and other Unicode spaces) become one space,
lines lose their leading and trailing blanks, and runs of blank lines become one
blank line (a paragraph break).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from modelsmith.api.datapipeline import Normalize, UnicodeForm

_SPACES = re.compile(r"[^\S\n]+")
_LINE_EDGES = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


_FORMS: dict[UnicodeForm, Literal["NFC", "NFKC"]] = {
    UnicodeForm.NFC: "NFC",
    UnicodeForm.NFKC: "NFKC",
}


def normalize(text: str, spec: Normalize) -> str:
    form = _FORMS.get(spec.unicode)
    if form is not None:
        text = unicodedata.normalize(form, text)
    if spec.collapse_whitespace:
        text = text.replace("\r\n", "\n")
        text = _SPACES.sub(" ", text)
        text = _LINE_EDGES.sub("\n", text)
        text = _BLANK_LINES.sub("\n\n", text).strip()
    return text
