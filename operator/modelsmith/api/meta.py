"""Shared pieces of every kind: camelCase models, conditions, the CRD identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelsmith.io"
VERSION = "v1alpha1"
CATEGORY = "modelsmith"


class CamelModel(BaseModel):
    """snake_case in Python, camelCase in YAML; unknown fields are an error, not ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


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


@dataclass(frozen=True)
class KindInfo:
    """What the CRD needs besides the schema: names, columns, the kind's models."""

    kind: str
    plural: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    short_names: tuple[str, ...] = ()
    printer_columns: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"
