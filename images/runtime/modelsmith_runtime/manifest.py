"""What makes a directory an artifact: its files, hashed, and the marker that lists them.

The digest is computed as earlier versions computed it over a whole directory, so a
marker written before manifests listed their files still checks out by digest alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import ValidationError

from modelsmith.contract import COMPLETION_MARKER, Manifest, ManifestFile
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.uris import open_fs


def file_sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:  # on a PVC "published" must survive the node, not just the process
            os.fsync(handle.fileno())
    return digest.hexdigest()


def digest_of(files: list[ManifestFile]) -> str:
    """sha256 over every file's path and content hash, in the order earlier versions
    walked a directory (pathlib's, part by part), so old markers' digests still agree."""
    outer = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path.split("/")):
        outer.update(f"{file.path}\0{file.sha256}\n".encode())
    return f"sha256:{outer.hexdigest()}"


def inventory(root: Path, *, sync: bool = False) -> list[ManifestFile]:
    """Every file under ``root`` but its own marker, hashed."""
    return [
        ManifestFile(
            path=path.relative_to(root).as_posix(),
            size=path.stat().st_size,
            sha256=file_sha256(path, sync=sync),
        )
        for path in sorted(root.rglob("*"))
        if path.is_file() and path != root / COMPLETION_MARKER
    ]


def incomplete(uri: str, what: str, why: str) -> BadInputError:
    return BadInputError("IncompleteArtifact", f"{what} at {uri} {why}: not (fully) published")


def corrupt(uri: str, what: str, why: str) -> BadInputError:
    return BadInputError("CorruptArtifact", f"{what} at {uri} does not match its manifest: {why}")


def parse(raw: bytes, uri: str, what: str) -> Manifest:
    if not raw.strip():
        raise incomplete(uri, what, f"has an empty {COMPLETION_MARKER}")
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        raise incomplete(uri, what, f"has an invalid {COMPLETION_MARKER} ({exc})") from exc


def check_local(path: Path, uri: str, what: str) -> Manifest:
    """The marker and the listed sizes, not the hashes: a mounted artifact is read where
    it is, and hashing a model at every pod start would cost what mounting it saves.

    Markers of earlier versions list no files: those are taken on their marker alone.
    """
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise BadInputError("MissingArtifact", f"{what}: {uri} {state}")
    try:
        manifest = parse((path / COMPLETION_MARKER).read_bytes(), uri, what)
    except FileNotFoundError as exc:
        raise incomplete(uri, what, f"has no {COMPLETION_MARKER} (half-written?)") from exc
    for file in manifest.files:
        try:
            size = (path / file.path).stat().st_size
        except FileNotFoundError as exc:
            raise corrupt(uri, what, f"{file.path} is missing") from exc
        if size != file.size:
            raise corrupt(uri, what, f"{file.path} has {size} bytes, not {file.size}")
    return manifest


def read_manifest(uri: str) -> Manifest | None:
    """The marker of whatever is at ``uri``, or None while there is no valid one."""
    fs, root = open_fs(uri)
    try:
        return Manifest.model_validate_json(fs.cat_file(f"{root.rstrip('/')}/{COMPLETION_MARKER}"))
    except (OSError, ValueError):
        return None
