"""Reading and publishing artifacts at a URI, so nothing half-written looks complete.

A directory artifact is complete when it holds `COMPLETION_MARKER`, written last, which
records the artifact's digest. On a local path (a PVC, `file://`) the directory is also
built under a staging name and renamed into place, so a reader never even sees a
partial one; on object storage (`s3://`, `gs://` through fsspec) files are uploaded
first and the marker after them, and readers refuse an artifact without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime.errors import BadInputError

PVC_ROOT = Path(os.environ.get("MODELSMITH_PVC_ROOT", "/mnt/pvc"))
"""Where `pvc://<claim>/<path>` URIs are mounted inside the pods."""


def local_path(uri: str) -> Path | None:
    """The filesystem path a URI names, or None for object storage."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri.startswith("pvc://"):
        return PVC_ROOT / uri.removeprefix("pvc://")
    if uri.startswith("/"):
        return Path(uri)
    return None


def _digest(root: Path) -> str:
    """sha256 over every file's relative path and content, in a stable order."""
    outer = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name == COMPLETION_MARKER:
            continue
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return f"sha256:{outer.hexdigest()}"


def _marker(digest: str, meta: dict[str, Any]) -> str:
    return json.dumps({"digest": digest, **meta}, indent=2, sort_keys=True)


@contextlib.contextmanager
def publish(uri: str, meta: dict[str, Any] | None = None) -> Iterator[tuple[Path, list[str]]]:
    """Yield an empty staging directory; on a clean exit, publish it at ``uri``.

    The second item receives the digest once published. On an exception nothing is
    published and the staging directory is removed.
    """
    digest_out: list[str] = []
    target = local_path(uri)
    parent = target.parent if target is not None else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield staging, digest_out
        digest = _digest(staging)
        (staging / COMPLETION_MARKER).write_text(_marker(digest, meta or {}))
        if target is not None:
            _replace_dir(staging, target)
        else:
            _upload(staging, uri)
        digest_out.append(digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, target: Path) -> None:
    """Swap the staging directory in; an older artifact at the same place goes away."""
    if target.exists():
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(trash)
        staging.rename(target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(target)


def _upload(staging: Path, uri: str) -> None:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(uri)
    marker = staging / COMPLETION_MARKER
    if fs.exists(f"{root}/{COMPLETION_MARKER}"):
        fs.rm(f"{root}/{COMPLETION_MARKER}")  # unpublish the old one before overwriting
    # Object stores have no folders; a filesystem behind a URL (local://, a mount) does.
    folders = isinstance(fs, LocalFileSystem)
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p != marker):
        target = f"{root}/{path.relative_to(staging).as_posix()}"
        if folders:
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
    if folders:
        fs.makedirs(root, exist_ok=True)
    fs.put_file(str(marker), f"{root}/{COMPLETION_MARKER}")


def open_artifact(uri: str, what: str) -> Path:
    """A complete artifact as a local directory (downloaded when remote)."""
    target = local_path(uri)
    if target is None:
        import fsspec

        fs, root = fsspec.core.url_to_fs(uri)
        if not fs.exists(f"{root}/{COMPLETION_MARKER}"):
            raise BadInputError("IncompleteArtifact", f"{what} at {uri} was never published")
        cache = Path(tempfile.mkdtemp(prefix="artifact-"))
        fs.get(f"{root}/", str(cache), recursive=True)
        target = cache
    if not target.is_dir():
        raise BadInputError("MissingArtifact", f"{what}: {uri} does not exist")
    marker = target / COMPLETION_MARKER
    if not marker.is_file():
        raise BadInputError(
            "IncompleteArtifact", f"{what} at {uri} has no {COMPLETION_MARKER}: half-written?"
        )
    return target


def artifact_digest(path: Path) -> str | None:
    try:
        recorded = json.loads((path / COMPLETION_MARKER).read_text()).get("digest")
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, str) else None
