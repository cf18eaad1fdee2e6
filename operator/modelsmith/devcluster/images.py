"""Build the project's images for the local dev cluster, without a Docker engine, and
push them to its registry.

There is no Docker daemon and no base image can be pulled here, so the base is made
from Debian packages (imagebase) and the images are built on it with ``buildah bud``,
passed as ``--build-arg PYTHON_IMAGE``: images/operator/Dockerfile for the operator,
and for the four workload images their target (``--target``) of
images/workloads.Dockerfile. The Dockerfiles themselves stay the ones a plain
``docker build`` uses with the official python image.

Everything is keyed by content, so nothing is rebuilt twice:

- the base by its recipe (imagebase);
- each image by a hash of what it is built from (imagecontext), so an unchanged tree
  reuses the image and tests can name it;
- within a build, buildah's layer cache (``--layers``, in /var/lib/containers) and a
  pip cache mount: the Dockerfiles install the third-party dependencies from the
  pyproject files alone, then the project with ``--no-deps``, so a source-only change
  rebuilds only the last layers.

buildah's quirks on this machine are in the buildah module; the store's housekeeping
(sizes, prune) is imagestore.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelsmith.devcluster.buildah import (
    CA_BUNDLE,
    PREFIX,
    Log,
    human_size,
    image_exists,
    image_info,
    images_cache,
    log_path,
    require_tools,
    run_logged,
)
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.imagebase import ensure_base
from modelsmith.devcluster.imagecontext import (
    IMAGES,
    build_target,
    dockerfile_path,
    image_tag,
    source_root,
)


@dataclass(frozen=True)
class ImageRef:
    """One image in buildah's local storage."""

    name: str
    tag: str
    image_id: str = ""
    size: int = 0  # bytes, uncompressed, as `buildah images` counts them
    seconds: float = 0.0  # how long this call spent building it; 0 when it was reused

    @property
    def repository(self) -> str:
        return f"{PREFIX}/{self.name}"

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


def bud_argv(
    name: str, root: Path, tag: str, base: str, *, ca_bundle: str | None = CA_BUNDLE
) -> list[str]:
    argv = ["buildah", "bud", "--runtime", "runc", "--layers", "--network", "host"]
    if ca_bundle is not None:  # outbound TLS is intercepted: pip must trust the host's CAs
        argv += ["-v", f"{ca_bundle}:{ca_bundle}:ro"]
    argv += ["--build-arg", f"PYTHON_IMAGE={base}"]
    target = build_target(name)
    if target is not None:  # a workload image: its stage of images/workloads.Dockerfile
        argv += ["--target", target]
    argv += ["-f", str(dockerfile_path(root, name)), "-t", f"{PREFIX}/{name}:{tag}", str(root)]
    return argv


def build(
    names: Iterable[str] = IMAGES, log: Log = print, *, root: Path | None = None
) -> dict[str, ImageRef]:
    """Build (or reuse) each named image on the local base; returns them by name."""
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in IMAGES]
    if unknown:
        raise DevClusterError(
            f"unknown image {', '.join(unknown)}; the images: {', '.join(IMAGES)}"
        )
    require_tools("buildah", "runc")
    root = source_root() if root is None else root
    cache = images_cache()
    cache.mkdir(parents=True, exist_ok=True)
    refs: dict[str, ImageRef] = {}
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time: they share the layer cache
        base = ensure_base(log)
        ca_bundle = CA_BUNDLE if Path(CA_BUNDLE).is_file() else None
        for name in wanted:
            tag = image_tag(name, root, base)
            ref = ImageRef(name, tag)
            seconds = 0.0
            if not image_exists(ref.reference):
                log_file = log_path(name, tag)
                log(f"{name}: building {ref.reference} (log: {log_file})")
                started = time.monotonic()
                argv = bud_argv(name, root, tag, base, ca_bundle=ca_bundle)
                run_logged(argv, log_file, f"building the {name} image")
                seconds = time.monotonic() - started
            image_id, size = image_info(ref.reference)
            refs[name] = ImageRef(name, tag, image_id, size, seconds)
            how = f"built in {seconds:.1f} s" if seconds else "up to date"
            log(f"{name}: {ref.reference} {human_size(size)} ({how})")
    return refs


def push_reference(ref: ImageRef, registry: str, tag: str | None = None) -> str:
    return f"{registry}/modelsmith/{ref.name}:{tag or ref.tag}"


def release_tag(refs: Iterable[ImageRef]) -> str:
    """One tag for a set of images, from their content tags.

    The chart (like KServe's and Kubeflow's) names one registry and one tag for every
    workload image; our images each have their own content tag. This tag changes
    whenever any of them does, so a node never runs a stale image under a reused tag.
    """
    key = "\n".join(sorted(f"{r.name}:{r.tag}" for r in refs))
    return "dev-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def push_argv(ref: ImageRef, registry: str, tag: str | None = None) -> list[str]:
    # The dev registry is a local one on 127.0.0.1 speaking plain HTTP. zstd, not gzip:
    # a torch image's 5.6 GB layer compresses in seconds instead of minutes, and
    # containerd (>= 1.5) unpacks it faster too.
    dest = f"docker://{push_reference(ref, registry, tag)}"
    return [
        "buildah",
        "push",
        "--tls-verify=false",
        "--compression-format=zstd",
        ref.reference,
        dest,
    ]


def push(ref: ImageRef, registry: str, log: Log = print, *, tag: str | None = None) -> str:
    """Push one built image to ``registry`` (host:port), under its content tag or
    ``tag``; returns the pushed reference. Layers the registry has are not sent again."""
    require_tools("buildah")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]+)?", registry):
        raise DevClusterError(f"registry {registry!r}: expected HOST or HOST:PORT")
    started = time.monotonic()
    argv = push_argv(ref, registry, tag)
    run_logged(argv, log_path(f"push-{ref.name}", tag or ref.tag), "buildah push")
    pushed = push_reference(ref, registry, tag)
    log(f"{ref.name}: pushed {pushed} in {time.monotonic() - started:.1f} s")
    return pushed
