"""Semantic checks the CRD schema cannot express, run before anything is built.

The spec's CEL rules do not compare fields with the object's own name, so "this
resource reads its own output" gets past `kubectl apply`; it would wait on itself
forever. The name rules are CEL at the object's root too, but an object stored before
the CRD had them reaches the operator anyway. Such objects become `Ready=False` with
reason InvalidSpec and no children.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from modelsmith.api.common import WorkloadSpec
from modelsmith.batchkinds import BatchKind


def semantic_errors(kind: BatchKind, name: str, spec: WorkloadSpec) -> list[str]:
    errors = kind.info.name_errors(name)
    for field, value in kind.inputs(spec).items():
        ref = value.from_ref if value is not None else None
        if ref is not None and (ref.kind, ref.name) == (kind.info.kind, name):
            errors.append(
                f"input {field}.fromRef names this {kind.info.kind} itself; "
                "it would wait for its own output forever"
            )
    return errors


def uri_fields(spec: BaseModel) -> dict[str, str]:
    """Every storage URI a spec sets, by where it is set (spec.sources[0].uri): in this
    API each one sits under a key named `uri`, whatever the kind."""
    found: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{where}.{key}"
                if key == "uri" and isinstance(value, str):
                    found[path] = value
                else:
                    walk(value, path)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk(spec.model_dump(mode="json", by_alias=True, exclude_none=True), "spec")
    return found
