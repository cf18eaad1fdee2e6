"""The route table: what the operator tells the built-in router, in one versioned place.

The operator writes it as JSON into a ConfigMap (`<service>-routes`, key `routes.json`);
the router watches that ConfigMap and swaps its table atomically, so a weight change
reaches traffic in the time of one watch event, not the kubelet's volume-sync minute.
Like `contract`, it needs nothing but pydantic, so the router does not import kopf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

ROUTES_KEY = "routes.json"
PIN_HEADER = "x-modelsmith-revision"
"""A request carrying this header goes to the named revision, whatever the weights."""
REVISION_HEADER = "x-modelsmith-revision"
"""The router names the revision that answered in this response header."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class RevisionRoute(_Model):
    name: str = Field(min_length=1, max_length=253, description="Revision, as in metrics.")
    url: str = Field(pattern=r"^https?://", description="Base URL of the revision's Service.")
    weight: Annotated[int, Field(ge=0, le=100)] = Field(description="Percent of user traffic.")


class Mirror(_Model):
    revision: str = Field(min_length=1, description="Where copies go; responses discarded.")
    percent: Annotated[int, Field(ge=1, le=100)] = Field(description="Share of requests copied.")


class RouteTable(_Model):
    namespace: str
    service: str = Field(description="The InferenceService; a label on every router metric.")
    revisions: list[RevisionRoute] = Field(min_length=1)
    mirror: Mirror | None = None
    pin_header: str = Field(default=PIN_HEADER, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RouteTable:
        names = [r.name for r in self.revisions]
        if len(set(names)) != len(names):
            raise ValueError(f"revision names repeat: {names}")
        weights = [r.weight for r in self.revisions]
        if sum(weights) != 100:
            raise ValueError(f"weights must add up to 100, not {weights}")
        if self.mirror and self.mirror.revision not in names:
            raise ValueError(f"mirror revision {self.mirror.revision!r} is not a route")
        return self

    def render(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class Split:
    """Who gets user traffic: ``weight`` percent to the canary, the rest to stable."""

    stable: str
    canary: str | None = None
    weight: int = 0
    mirror_percent: int = 0

    @property
    def revisions(self) -> list[str]:
        return [self.stable] + ([self.canary] if self.canary and self.canary != self.stable else [])
