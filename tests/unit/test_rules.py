"""Each cross-field rule is defined once (api.common.cel: CEL, message, Python) and
refused the same way wherever a spec is parsed.

The integration tier applies its invalid manifests to the real API server (the CEL
form). Here the same cases, from the same table, go through pydantic (the Python form,
which the operator and the runtime use on task configs that may never have passed an
API server): a case whose message is a rule's must be refused with that message.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from modelsmith.api import KINDS
from modelsmith.api.meta import Rules
from tests.integration import test_api_validation as apply_time

SPECS = {info.kind: info.spec for info in KINDS}


def _models(root: type[BaseModel]) -> set[type[BaseModel]]:
    """Every model reachable from a spec model through its fields."""
    seen: set[type[BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for arg in _types(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    todo.append(arg)
    return seen


def _types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types(a)]


RULE_MESSAGES = {
    rule.message
    for spec in SPECS.values()
    for model in _models(spec)
    if isinstance(extra := model.model_config.get("json_schema_extra"), Rules)
    for rule in extra.rules
}


def _rule_cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = [(k, {p: v}, m) for k, p, v, m in apply_time.CASES]
    cases += apply_time.COMBINED
    return [c for c in cases if any(c[2] in message for message in RULE_MESSAGES)]


RULE_CASES = _rule_cases()


def test_the_rules_are_found_and_the_table_reaches_them() -> None:
    assert len(RULE_MESSAGES) >= 25, RULE_MESSAGES
    assert len(RULE_CASES) >= 8, "the apply-time table lost its rule cases"


@pytest.mark.parametrize(("kind", "changes", "message"), RULE_CASES)
def test_a_rule_the_api_server_enforces_is_enforced_by_pydantic_too(
    kind: str, changes: dict[str, Any], message: str
) -> None:
    doc = apply_time.VALID[kind]
    SPECS[kind].model_validate(doc["spec"])  # the sample itself holds
    for path, value in changes.items():
        doc = apply_time._set(doc, path, value)
    with pytest.raises(ValidationError) as refused:
        SPECS[kind].model_validate(doc["spec"])
    assert message in str(refused.value)
