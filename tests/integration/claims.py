"""PersistentVolumeClaims that bind on the dev cluster, which has no provisioner yet.

Each claim gets a hostPath PersistentVolume reserved for it (claimRef), so the real
PV controller binds the pair and the real scheduler places pods that mount it; kwok's
nodes never touch the path. The volume is cluster-scoped: it is deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.helpers import wait_for

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def sample_claim() -> dict[str, Any]:
    """The claim samples/storage.yaml tells users to create for the chain."""
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / "storage.yaml").read_text())
    return doc


@contextmanager
def bound_claims(namespace: str, *claims: dict[str, Any]) -> Iterator[list[str]]:
    core = client.CoreV1Api()
    volumes = []
    try:
        for claim in claims:
            name = claim["metadata"]["name"]
            spec = claim["spec"]
            volume = f"pv-{uuid.uuid4().hex[:10]}"
            core.create_persistent_volume(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": volume},
                    "spec": {
                        "capacity": spec["resources"]["requests"],
                        "accessModes": spec["accessModes"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "",
                        "hostPath": {"path": f"/tmp/modelsmith-pv/{volume}"},  # noqa: S108
                        "claimRef": {"namespace": namespace, "name": name},
                    },
                }
            )
            volumes.append(volume)
            core.create_namespaced_persistent_volume_claim(
                namespace, claim | {"spec": spec | {"storageClassName": "", "volumeName": volume}}
            )
        for claim in claims:
            name = claim["metadata"]["name"]
            wait_for(
                lambda n=name: (
                    core.read_namespaced_persistent_volume_claim(n, namespace).status.phase
                    == "Bound"
                ),
                timeout=60,
                what=f"claim {name} to bind",
            )
        yield volumes
    finally:
        for volume in volumes:
            core.delete_persistent_volume(volume)


def claim(name: str, *modes: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "1Gi"}}},
    }
