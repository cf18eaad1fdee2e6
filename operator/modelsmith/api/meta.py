"""Shared pieces of every kind: camelCase models, conditions, the CRD identity."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "modelsmith.io"
VERSION = "v1alpha1"
CATEGORY = "modelsmith"


@dataclass(frozen=True)
class Rule:
    """One cross-field rule of a model: CEL for the API server, Python for pydantic."""

    cel: str
    message: str
    holds: Callable[[Any], bool]


class Rules:
    """A model's rules, as its json_schema_extra: the schema gets the CEL, and
    CamelModel's validator finds the Python checks here (api.common.cel makes these)."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules

    def __call__(self, schema: dict[str, Any]) -> None:
        schema["x-kubernetes-validations"] = [
            {"rule": r.cel, "message": r.message} for r in self.rules
        ]


class CamelModel(BaseModel):
    """snake_case in Python, camelCase in YAML; unknown fields are an error, not ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    @model_validator(mode="after")
    def _rules_hold(self) -> Self:
        extra = type(self).model_config.get("json_schema_extra")
        if isinstance(extra, Rules):
            broken = [r.message for r in extra.rules if not r.holds(self)]
            if broken:
                raise ValueError("; ".join(broken))
        return self


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(CamelModel):
    """A metav1.Condition (the shape `kubectl wait --for=condition=` and dashboards read)."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready or Succeeded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail of the last transition.")
    last_transition_time: datetime = Field(
        description="When the condition last changed status (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was computed from."
    )


DNS_LABEL_MAX = 63
DNS_1035_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


@dataclass(frozen=True)
class LongestChild:
    """The longest name the operator derives from a resource's name, e.g. the hostname
    of a Job's last worker pod (NAME-run-1023): it bounds the resource's own name."""

    pattern: str
    """The child's name with NAME for the resource's name."""
    what: str

    @property
    def extra(self) -> int:
        return len(self.pattern.replace("NAME", ""))


@dataclass(frozen=True)
class KindInfo:
    """What the CRD needs besides the schema: names, columns, the kind's models."""

    kind: str
    plural: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    longest_child: LongestChild
    short_names: tuple[str, ...] = ()
    printer_columns: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def max_name_length(self) -> int:
        """Child names (and the label values that carry this name) must be DNS labels."""
        return DNS_LABEL_MAX - self.longest_child.extra

    def name_rules(self) -> list[tuple[str, str]]:
        """CEL rules on the whole object, with their messages: the API server refuses
        at apply time a name whose children would be refused later."""
        limit, child = self.max_name_length, self.longest_child
        return [
            (
                f"self.metadata.name.size() <= {limit}",
                f"metadata.name may have at most {limit} characters: the {self.kind}'s "
                f"children are named after it, and {child.pattern} ({child.what}) must "
                f"fit in {DNS_LABEL_MAX}",
            ),
            (
                f"self.metadata.name.matches('{DNS_1035_PATTERN}')",
                "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', "
                "starting with a letter): the one name shape that every child of every "
                "modelsmith kind accepts, Services included",
            ),
        ]

    def name_errors(self, name: str) -> list[str]:
        """The same rules in Python, for objects stored before the CRD had them."""
        (_, too_long), (_, not_a_label) = self.name_rules()
        errors = [too_long] if len(name) > self.max_name_length else []
        if re.fullmatch(DNS_1035_PATTERN, name) is None:
            errors.append(not_a_label)
        return errors

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"
