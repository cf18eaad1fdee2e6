"""Housekeeping of buildah's store: what the dev images take, and reclaiming the rest.

A build cache only grows: each source or dependency change leaves the previous image
behind, and with it gigabytes of layers once a dependency moved. This module measures
the store and removes what the current tree no longer builds.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelsmith.devcluster.buildah import (
    PREFIX,
    Log,
    human_size,
    images_cache,
    inspect,
    require_tools,
)
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.imagebase import base_reference
from modelsmith.devcluster.imagecontext import IMAGES, image_tag, source_root
from modelsmith.devcluster.processes import du_bytes


def layer_bytes(references: Iterable[str]) -> int:
    """What these images' layers take in the build store, a shared layer once.

    The rest of the store is the cache of older builds (`prune` reclaims it), which
    depends on the machine's history, not on the images.
    """
    sizes: dict[str, int] = {}
    for reference in references:
        data = inspect(reference)
        if data is None:
            raise DevClusterError(f"buildah inspect {reference}: no such image")
        manifest = json.loads(str(data.get("Manifest") or "{}"))
        for layer in manifest.get("layers", []):
            sizes[str(layer.get("digest"))] = int(layer.get("size", 0))
    return sum(sizes.values())


def store_bytes() -> int:
    """What buildah's storage (every image and build layer) takes on disk; 0 without it."""
    if shutil.which("buildah") is None:
        return 0
    proc = subprocess.run(["buildah", "info"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return 0
    store = json.loads(proc.stdout).get("store", {})
    return du_bytes(Path(store.get("GraphRoot", "/var/lib/containers/storage")))


@dataclass(frozen=True)
class StoredImage:
    """One image in buildah's store, as `buildah images --all --json` lists it."""

    id: str
    names: tuple[str, ...]
    created: str


def _store_images() -> list[StoredImage]:
    proc = subprocess.run(
        ["buildah", "images", "--all", "--json"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise DevClusterError(f"buildah images failed: {proc.stderr.strip()}")
    return [
        StoredImage(str(i["id"]), tuple(i.get("names") or ()), str(i.get("createdatraw", "")))
        for i in json.loads(proc.stdout or "[]")
    ]


def _layers(reference: str) -> list[str]:
    data = inspect(reference) or {}
    oci = data.get("OCIv1")
    rootfs = oci.get("rootfs") if isinstance(oci, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return [str(d) for d in diff_ids] if isinstance(diff_ids, list) else []


def _newest_per_repository(listed: Iterable[StoredImage]) -> set[str]:
    newest: dict[str, tuple[str, str]] = {}
    for image in listed:
        for name in image.names:
            repository = name.rsplit(":", 1)[0]
            if repository not in newest or image.created > newest[repository][0]:
                newest[repository] = (image.created, name)
    return {name for _, name in newest.values()}


def stale_images(keep: Iterable[str]) -> list[str]:
    """The ids of our images that neither ``keep`` (references) nor the newest image of
    each of our repositories needs.

    The newest stays even when the tree moved on: after a source edit it is what the
    next build reuses the dependency layers of. Ours are the modelsmith repositories
    and the untagged images buildah's layer cache makes while building on one of our
    bases. An untagged one is kept when every layer of it is a layer of a kept image:
    it is the cache of one of their steps. Images of anyone else in the same store
    (podman's, say) are never touched.
    """
    listed = _store_images()
    keep = set(keep) | _newest_per_repository(listed)
    names = {i.id: i.names for i in listed}
    ours = {i for i, ns in names.items() if any(n.startswith(f"{PREFIX}/") for n in ns)}
    bases = {i for i in ours if any(n.startswith(f"{PREFIX}/python-base:") for n in names[i])}
    base_layers = {layers[0] for i in bases if (layers := _layers(i))}
    kept_layers: set[str] = set()
    for ref in keep:
        if ref.startswith(f"{PREFIX}/"):
            kept_layers.update(_layers(ref))
    stale: list[str] = []
    for image_id, image_names in names.items():
        if any(n in keep for n in image_names):
            continue
        if image_names:
            if image_id in ours:
                stale.append(image_id)
            continue
        layers = _layers(image_id)
        if layers and layers[0] in base_layers and not set(layers) <= kept_layers:
            stale.append(image_id)
    return stale


def prune(log: Log = print, *, root: Path | None = None) -> int:
    """Remove what the build store holds of images this tree no longer builds (old
    content tags, old bases, their cached steps); returns the bytes given back.

    Each source or dependency change leaves the previous image behind, and with it
    gigabytes of layers once a dependency moved: a build cache only grows. What the
    current tree builds stays, so the next build is as warm as before.
    """
    require_tools("buildah")
    root = source_root() if root is None else root
    base = base_reference()
    keep = {base} | {f"{PREFIX}/{n}:{image_tag(n, root, base)}" for n in IMAGES}
    with (images_cache() / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # not while a build uses the cache
        before = store_bytes()
        stale = stale_images(keep)
        if stale:
            subprocess.run(["buildah", "rmi", "--force", *stale], capture_output=True, check=False)
        freed = max(0, before - store_bytes())
    log(f"build store: removed {len(stale)} stale images, {human_size(freed)} given back")
    return freed
