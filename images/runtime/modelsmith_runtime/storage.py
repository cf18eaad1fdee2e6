"""Publishing and reading artifacts, so nothing half-written looks complete and nothing
published is ever replaced.

An artifact is a directory whose COMPLETION_MARKER, a JSON `Manifest` listing every
file with its size and sha256, is written last. Readers take only the files it lists:
the leftovers of a killed upload under the same prefix are never mistaken for part of
it. On a local path (a mounted PVC, file://) the directory is built under a staging
name beside the target and renamed into place, marker included, so it appears whole;
on object storage there is no rename, so the files go up first and the marker after.

Published artifacts are immutable. A retry whose output already holds a complete
artifact (its predecessor published, then died before reporting) publishes beside it
at `<output>-attempt-<n>` and reports that URI; a location without a marker holds
nothing anyone trusts, so it may be reused.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from modelsmith.contract import COMPLETION_MARKER, Manifest, ManifestFile, Producer, Result
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.manifest import (
    check_local,
    corrupt,
    digest_of,
    file_sha256,
    incomplete,
    inventory,
    parse,
)
from modelsmith_runtime.uris import local_path, open_fs, remote_fs


@dataclass
class Published:
    """Filled in once `publish` has published: where, what, how many bytes."""

    uri: str = ""
    digest: str = ""
    size_bytes: int = 0
    version: str | None = None


def _candidates(uri: str, attempt: int) -> Iterator[str]:
    """The output itself, then the places beside it a retry may publish at."""
    yield uri
    beside = f"{uri.rstrip('/')}-attempt-{attempt}"
    yield beside
    for n in itertools.count(2):
        yield f"{beside}-{n}"


@contextlib.contextmanager
def publish(
    uri: str,
    meta: dict[str, Any] | None = None,
    *,
    producer: Producer | None = None,
    replace: bool = False,
    version: str | None = None,
) -> Iterator[tuple[Path, Published]]:
    """Yield an empty staging directory; on a clean exit, publish it at ``uri`` or, if a
    complete artifact is there already, beside it. On an exception nothing is published.

    ``version`` (a model's spec.version) goes into the manifest, the artifact's own
    record, so whoever reads the model later learns its version from the model itself.

    ``replace`` is for what is not an artifact downstream (a data worker's part): the
    same writer's earlier result there is unpublished first, then replaced.
    """
    out = Published()
    target = local_path(uri)
    if target is not None:  # staged beside the target: the rename stays on one filesystem
        target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent if target else None))
    try:
        yield staging, out
        files = inventory(staging, sync=target is not None)
        digest = digest_of(files)
        manifest = Manifest(
            digest=digest, producer=producer, version=version, files=files, **(meta or {})
        ).model_dump_json(by_alias=True, exclude_none=True, indent=2)
        attempt = producer.attempt if producer else 0
        candidates = iter([uri]) if replace else _candidates(uri, attempt)
        if target is not None:
            out.uri = _rename_into_place(staging, manifest, candidates, replace)
        else:
            out.uri = _upload(staging, files, manifest, candidates, replace)
        out.digest, out.size_bytes = digest, sum(file.size for file in files)
        out.version = version
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _set_aside(target: Path) -> None:
    trash = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):
        target.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _rename_into_place(
    staging: Path, manifest: str, candidates: Iterator[str], replace: bool
) -> str:
    with (staging / COMPLETION_MARKER).open("w") as handle:
        handle.write(manifest)
        handle.flush()
        os.fsync(handle.fileno())
    for candidate in candidates:
        target = local_path(candidate)
        if target is None:
            raise BadInputError("NotMounted", f"{candidate} is not mounted in this pod")
        while True:
            try:
                staging.rename(target)  # atomic; refuses a directory that has content
            except OSError as exc:
                if exc.errno == errno.ENOTDIR:
                    raise BadInputError(
                        "InvalidOutput", f"{candidate} exists and is not a directory"
                    ) from exc
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if (target / COMPLETION_MARKER).exists() and not replace:
                    break  # complete: publish beside it, never over it
                _set_aside(target)  # no marker: nothing anyone trusts, reuse the place
                continue
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself must survive the node
            finally:
                os.close(fd)
            return candidate
    raise AssertionError("unreachable: candidates never run out")


def _upload(
    staging: Path,
    files: list[ManifestFile],
    manifest: str,
    candidates: Iterator[str],
    replace: bool,
) -> str:
    """Every file, then the marker. Object stores have no rename, so a location counts
    as taken once its marker exists; a retry finding one moves on to the next place."""
    for candidate in candidates:
        fs, root = open_fs(candidate)
        root = root.rstrip("/")
        marker = f"{root}/{COMPLETION_MARKER}"
        if fs.exists(marker):
            if not replace:
                continue
            fs.rm_file(marker)  # unpublish before any of its files changes
        remote = [f"{root}/{file.path}" for file in files]
        if isinstance(fs, LocalFileSystem):  # a filesystem behind a URL (local://) has folders
            for folder in {path.rsplit("/", 1)[0] for path in remote} | {root}:
                fs.makedirs(folder, exist_ok=True)
        if files:
            fs.put([str(staging / file.path) for file in files], remote)
        fs.pipe_file(marker, manifest.encode())
        return candidate
    raise AssertionError("unreachable: candidates never run out")


def _download(fs: Any, root: str, uri: str, what: str, dest: Path) -> list[ManifestFile]:
    """The listed files into ``dest``, each checked, then the marker last; the files."""
    root = root.rstrip("/")
    try:
        raw = fs.cat_file(f"{root}/{COMPLETION_MARKER}")
    except FileNotFoundError as exc:
        raise incomplete(uri, what, f"has no {COMPLETION_MARKER}") from exc
    manifest = parse(raw, uri, what)
    (dest / COMPLETION_MARKER).unlink(missing_ok=True)  # an earlier partial fetch
    files = manifest.files
    if files:
        local = [dest.joinpath(*file.path.split("/")) for file in files]
        for file, path in zip(files, local, strict=True):
            if file.path.startswith("/") or ".." in file.path.split("/"):
                raise corrupt(uri, what, f"{file.path!r} leaves the artifact")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get([f"{root}/{file.path}" for file in files], [str(p) for p in local])
        except FileNotFoundError as exc:
            raise corrupt(uri, what, f"a listed file is missing ({exc})") from exc
        for file, path in zip(files, local, strict=True):
            size = path.stat().st_size
            if size != file.size:
                raise corrupt(uri, what, f"{file.path} has {size} bytes, not {file.size}")
            if file_sha256(path) != file.sha256:
                raise corrupt(uri, what, f"{file.path} has other content")
    else:  # a marker of an earlier version lists no files: the whole prefix, by digest
        fs.get(f"{root}/", f"{dest}/", recursive=True)
        files = inventory(dest)
    if digest_of(files) != manifest.digest:
        raise corrupt(uri, what, "the files do not add up to its digest")
    (dest / COMPLETION_MARKER).write_bytes(raw)
    return files


def open_artifact(uri: str, what: str) -> Path:
    """A complete artifact as a local directory: where it is mounted, or downloaded
    into scratch (verified file by file); BadInputError for anything less.

    The scratch copy lives as long as the process: callers read it until they exit,
    and a workload run as a plain process (tests, a laptop) must not leave it behind.
    """
    path = local_path(uri)
    if path is not None:
        check_local(path, uri, what)
        return path
    scratch = Path(tempfile.mkdtemp(prefix="artifact-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    try:
        _download(*remote_fs(uri), uri, what, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch


def fetch(uri: str, dest: Path) -> Result:
    """A published artifact into ``dest`` (the init container's emptyDir), verified
    file by file wherever it comes from.

    A remote URI is downloaded whatever the mounts table says: in the served pod it
    maps this very URI onto ``dest``, which must not count as its own source.
    """
    local = uri.startswith(("file://", "/", "pvc://"))
    files = _download(*(open_fs(uri) if local else remote_fs(uri)), uri, "artifact", dest)
    size = sum(file.size for file in files)
    return Result(uri=uri, digest=artifact_digest(dest), size_bytes=size)


def artifact_digest(path: Path) -> str | None:
    try:
        return Manifest.model_validate_json((path / COMPLETION_MARKER).read_bytes()).digest
    except (OSError, ValueError):
        return None
