"""Operator settings read from the environment once, at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelsmith import __version__

FIELD_MANAGER = "modelsmith"
DEFAULT_REGISTRY = "ghcr.io/modelsmith"


STATUS_AUDIENCE = "modelsmith.io/status"
"""Audience of the projected token a workload presents when it reports progress."""


@dataclass(frozen=True)
class Settings:
    image_registry: str
    image_tag: str
    status_url: str | None = None
    """Where workload pods report progress (the operator's status endpoint, as pods
    reach it); None: pods are not told, and status.progress fills in only at the end."""
    prometheus_url: str | None = None
    """Where canary analyses query Prometheus; None: a canary with checks pauses."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            image_registry=os.environ.get("MODELSMITH_IMAGE_REGISTRY", DEFAULT_REGISTRY),
            image_tag=os.environ.get("MODELSMITH_IMAGE_TAG", __version__),
            status_url=os.environ.get("MODELSMITH_STATUS_URL") or None,
            prometheus_url=os.environ.get("MODELSMITH_PROMETHEUS_URL") or None,
        )

    def image(self, name: str) -> str:
        return f"{self.image_registry}/{name}:{self.image_tag}"
