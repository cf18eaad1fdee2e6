"""Operator settings read from the environment once, at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelsmith import __version__

FIELD_MANAGER = "modelsmith"
DEFAULT_REGISTRY = "ghcr.io/modelsmith"


@dataclass(frozen=True)
class Settings:
    image_registry: str
    image_tag: str

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            image_registry=os.environ.get("MODELSMITH_IMAGE_REGISTRY", DEFAULT_REGISTRY),
            image_tag=os.environ.get("MODELSMITH_IMAGE_TAG", __version__),
        )

    def image(self, name: str) -> str:
        return f"{self.image_registry}/{name}:{self.image_tag}"
