"""The chart's values.yaml documents every value, and its schema knows every value.

helm only reads values.schema.json; a value added to values.yaml and forgotten in the
schema would be rejected as unknown, and one forgotten in values.yaml goes undocumented.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelsmith"
FREE_FORM = {"resources"}  # Kubernetes' own structures, documented upstream


def _keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        found.append(path)
        if isinstance(value, dict) and value and key not in FREE_FORM:
            found += _keys(value, f"{path}.")
    return found


def test_every_value_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        stack = [(d, k) for d, k in stack if d < indent]
        inside_free_form = any(k in FREE_FORM for _, k in stack)
        stack.append((indent, key))
        if inside_free_form:
            continue
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("#"):
            undocumented.append(".".join(k for _, k in stack))
    assert undocumented == []


def test_schema_describes_exactly_the_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def schema_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
        found = []
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}{key}"
            found.append(path)
            if key not in FREE_FORM and "properties" in sub:
                found += schema_keys(sub, f"{path}.")
        return found

    assert sorted(schema_keys(schema)) == sorted(_keys(values))


def test_the_schema_rejects_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def closed(node: dict[str, Any], path: str) -> list[str]:
        open_ = [] if node.get("additionalProperties") is False else [path or "<root>"]
        props = node.get("properties", {})
        return (open_ if props else []) + [
            p for key, sub in props.items() for p in closed(sub, f"{path}.{key}".lstrip("."))
        ]

    assert closed(schema, "") == []
