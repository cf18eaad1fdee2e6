"""How a pod reaches its artifacts: claim mounts, object-store credentials, scratch.

Pure, like every builder. pvc:// is mounted, never copied: the output's claim at its
root, read-write (the workload publishes by renaming a staging directory into place
and puts retries and checkpoints beside the output, so it needs the parent too), every
other claim read-only. Where a claim is both read and written, each input under it is
resolved through its read-only mount, so a stage can never write into what it reads.
The workload learns where each URI is from one env var (`MOUNTS_ENV`), the longest
prefix winning. s3:// credentials are secretKeyRefs: the operator names the Secret and
never reads it, and the kubelet's error for a missing key names the key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from modelsmith.api import uri
from modelsmith.contract import MOUNT_ROOT, MOUNTS_ENV, SCRATCH_DIR

FS_GROUP = 10001
"""The images' uid and gid (`useradd --uid 10001`): fsGroup makes a claim writable."""
REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_KEYS = (
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)
MODEL_DIR = f"{MOUNT_ROOT}/model"
"""Where an InferenceService's init container fetches a remote model to."""


@dataclass(frozen=True)
class Claim:
    name: str
    written: bool
    """The output lives on it: mounted read-write at its root."""


@dataclass
class Mounts:
    """Volumes, volumeMounts and env for one pod template, built up from its URIs."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    table: dict[str, str] = field(default_factory=dict)
    env: list[dict[str, Any]] = field(default_factory=list)

    def env_table(self) -> list[dict[str, Any]]:
        if not self.table:
            return []
        return [{"name": MOUNTS_ENV, "value": json.dumps(self.table, sort_keys=True)}]


def claims(output: str | None, reads: Iterable[str]) -> list[Claim]:
    """Every claim a pod mounts, in a stable order, the output's marked written."""
    written = uri.parse(output).root if output and output.startswith("pvc://") else None
    names = {uri.parse(u).root for u in reads if u.startswith("pvc://")}
    if written:
        names.add(written)
    return [Claim(n, n == written) for n in sorted(names)]


def _volume_name(index: int) -> str:
    return f"claim-{index}"


def claim_mounts(output: str | None, reads: Iterable[str]) -> Mounts:
    reads = sorted(set(reads))
    out = Mounts()
    for index, claim in enumerate(claims(output, reads)):
        volume = _volume_name(index)
        out.volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim.name, "readOnly": not claim.written},
            }
        )
        ro = f"{MOUNT_ROOT}/ro/{claim.name}"
        if claim.written:
            rw = f"{MOUNT_ROOT}/rw/{claim.name}"
            out.mounts.append({"name": volume, "mountPath": rw})
            out.table[f"pvc://{claim.name}"] = rw
        else:
            out.table[f"pvc://{claim.name}"] = ro
        inputs = [u for u in reads if uri.parse(u).root == claim.name and u.startswith("pvc://")]
        if claim.written and inputs:
            out.mounts.append({"name": volume, "mountPath": ro, "readOnly": True})
            for read in inputs:
                out.table[read.rstrip("/")] = uri.join(ro, uri.parse(read).path)
        elif not claim.written:
            out.mounts.append({"name": volume, "mountPath": ro, "readOnly": True})
    return out


def credentials_env(secret: str | None) -> list[dict[str, Any]]:
    """The AWS variables s3fs and boto read, each from the named Secret."""
    if secret is None:
        return []
    env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key in REQUIRED_KEYS
    ]
    env += [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
        }
        for key in OPTIONAL_KEYS
    ]
    return env


def uses_object_store(uris: Iterable[str]) -> bool:
    return any(uri.parse(u).remote for u in uris)


def scratch(size: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The scratch emptyDir, its mount and the env that points caches at it: with a
    read-only root filesystem, /tmp and $HOME are the only places a library can write."""
    volume = {"name": "scratch", "emptyDir": {"sizeLimit": size}}
    mount = {"name": "scratch", "mountPath": SCRATCH_DIR}
    env = [
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "HOME", "value": f"{SCRATCH_DIR}/home"},
        {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_DIR}/cache"},
    ]
    return volume, mount, env


POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": FS_GROUP,
    "runAsGroup": FS_GROUP,
    "fsGroup": FS_GROUP,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""OnRootMismatch: a claim's files are chowned once, not on every pod start (which on
a large model takes minutes). CSI drivers with fsGroupPolicy None (NFS, CephFS)
ignore fsGroup: pre-chown such volumes to gid 10001."""
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
