"""The custom resource whose children the builders make: names, labels, owner reference.

Below every builder and handler, batch and inference alike, so none imports another
just for this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelsmith.api.meta import GROUP, VERSION


@dataclass(frozen=True)
class Owner:
    """Identity of the custom resource that owns (and garbage-collects) its children."""

    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": f"modelsmith-{component}",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "modelsmith",
            f"{GROUP}/{self.kind.lower()}": self.name,
        }

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.reference()],
        }
