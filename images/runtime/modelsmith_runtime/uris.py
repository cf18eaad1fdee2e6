"""Where a URI's bytes are from inside this pod: a mounted directory, or a remote store.

The operator mounts what a pod needs (a pvc:// claim, a model an init container
fetched) and says where in MODELSMITH_MOUNTS, so the images never guess a mount root.
Everything else goes through `open_fs`, the one place an fsspec filesystem is made,
so every stage talks to object storage with the same endpoint and without listing
caches: a cached listing taken before a marker was written would hide it for good.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from modelsmith.contract import MOUNTS_ENV
from modelsmith_runtime.errors import BadInputError

BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
"""The package behind each object-storage scheme, named when an image lacks it."""


@functools.lru_cache(maxsize=4)
def _mounts(raw: str) -> tuple[tuple[str, Path], ...]:
    """The mounts table, longest prefix first (parsed once per value of the variable)."""
    if not raw:
        return ()
    try:
        table = json.loads(raw)
    except ValueError as exc:
        raise BadInputError("InvalidEnvironment", f"{MOUNTS_ENV} is not JSON: {exc}") from exc
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in table.items()
    ):
        raise BadInputError(
            "InvalidEnvironment", f"{MOUNTS_ENV} must be a JSON object of URI prefix -> directory"
        )
    entries = [(prefix.rstrip("/"), Path(directory)) for prefix, directory in table.items()]
    return tuple(sorted(entries, key=lambda entry: len(entry[0]), reverse=True))


def local_path(uri: str) -> Path | None:
    """The directory or file a URI names in this pod, or None for a remote store.

    file:// and absolute paths are what they say. Anything else resolves through its
    longest MODELSMITH_MOUNTS prefix that ends on a "/" boundary, so an s3:// model the
    init container fetched is local here; a pvc:// URI must have an entry.
    """
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if uri.startswith("/"):
        return Path(uri)
    for prefix, directory in _mounts(os.environ.get(MOUNTS_ENV, "")):
        if uri == prefix or uri.startswith(prefix + "/"):
            rest = uri[len(prefix) :].strip("/")
            if ".." in rest.split("/"):
                raise BadInputError("InvalidUri", f"{uri}: '..' would leave the mount {prefix}")
            return directory / rest if rest else directory
    if uri.startswith("pvc://"):
        raise BadInputError(
            "NotMounted", f"{uri} is not mounted in this pod (no {MOUNTS_ENV} entry covers it)"
        )
    return None


def fs_options(uri: str) -> dict[str, Any]:
    """What every fsspec filesystem of ours is built with, torch's DCP writer's too.

    The endpoint is passed explicitly rather than left to botocore's own lookup, which
    varies with its version and config files; the S3-only AWS_ENDPOINT_URL_S3 wins over
    AWS_ENDPOINT_URL, as in the AWS SDKs.
    """
    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if uri.split("://", 1)[0] in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    return options


def remote_fs(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem of a remote URI and the path inside it, mounts not asked."""
    import fsspec

    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **fs_options(uri))
    except ImportError as exc:
        package = BACKENDS.get(scheme, f"the fsspec backend for {scheme}://")
        raise BadInputError(
            "MissingBackend", f"{uri}: this image lacks {package}, needed to read {scheme}://"
        ) from exc
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise BadInputError("UnsupportedUri", f"{uri}: {exc}") from exc
    return fs, str(path)


def open_fs(uri: str) -> tuple[Any, str]:
    """The filesystem a URI lives on and the path inside it, local or remote alike."""
    path = local_path(uri)
    if path is not None:
        return LocalFileSystem(), str(path)
    return remote_fs(uri)
