"""Operator settings read from the environment once, at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from modelsmith import __version__
from modelsmith.api import uri

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
    default_storage: str | None = None
    """A pvc:// or s3:// prefix under which a resource without output.uri publishes
    (<store>/<namespace>/<kind>/<name>/<uid>); None: output.uri is required."""
    default_storage_secret: str | None = None
    """The Secret (in each resource's namespace) with AWS keys for s3:// URIs, used by a
    resource that names neither storage.secretRef nor a serviceAccountName."""
    allow_node_paths: bool = False
    """file:// and bare paths name directories every node has (a dev or test cluster);
    off, they are refused, since on a real cluster nothing would survive the pod."""

    def __post_init__(self) -> None:
        """A wrong default store stops the operator at start-up, not each run later."""
        if self.default_storage is None:
            return
        try:
            remote_or_claim = uri.parse(self.default_storage).scheme != uri.Scheme.NODE
        except ValueError:
            remote_or_claim = False
        if not remote_or_claim:
            raise ValueError(
                f"default storage {self.default_storage!r} must be a pvc://, s3:// or gs:// "
                "prefix (MODELSMITH_DEFAULT_STORAGE, chart value storage.defaultStorage)"
            )

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            image_registry=os.environ.get("MODELSMITH_IMAGE_REGISTRY", DEFAULT_REGISTRY),
            image_tag=os.environ.get("MODELSMITH_IMAGE_TAG", __version__),
            status_url=os.environ.get("MODELSMITH_STATUS_URL") or None,
            prometheus_url=os.environ.get("MODELSMITH_PROMETHEUS_URL") or None,
            default_storage=os.environ.get("MODELSMITH_DEFAULT_STORAGE") or None,
            default_storage_secret=os.environ.get("MODELSMITH_DEFAULT_STORAGE_SECRET") or None,
            allow_node_paths=os.environ.get("MODELSMITH_ALLOW_NODE_PATHS", "").lower()
            in ("1", "true", "yes"),
        )

    def image(self, name: str) -> str:
        return f"{self.image_registry}/{name}:{self.image_tag}"
