"""Build the project's images for the local dev cluster, without a Docker engine.

No base image can be pulled on the machines this project runs on, and there is no
Docker daemon. So the base is made from Debian packages with mmdebstrap (bookworm,
minbase, Python 3.11 with pip; PEP 668's EXTERNALLY-MANAGED marker removed so pip
installs system-wide, as it does in the official python image) and imported into
buildah's storage as ``localhost/modelsmith/python-base:<key>``. Each of
``images/<name>/Dockerfile`` is then built with ``buildah bud`` on that base, passed
as ``--build-arg PYTHON_IMAGE``; the Dockerfiles themselves stay the ones a plain
``docker build`` uses with the official python image.

Everything is keyed by content, so nothing is rebuilt twice:

- the base by its recipe (suite, packages, mirrors, hooks), its tarball cached under
  ``~/.cache/modelsmith/images`` and the image skipped when it exists;
- each image tagged ``localhost/modelsmith/<name>:<hash>`` of what it is built from (its
  Dockerfile, every path its COPY instructions name, less what .dockerignore leaves
  out, and the base), so an unchanged tree reuses the image and tests can name it;
- within a build, buildah's layer cache (``--layers``, in /var/lib/containers) and a
  pip cache mount: the Dockerfiles install the third-party dependencies from the
  pyproject files alone, then the project with ``--no-deps``, so a source-only change
  rebuilds only the last layers.

This machine's quirks, found by testing: crun fails under buildah on hybrid cgroup v1
(``--runtime runc``), and outbound TLS is intercepted (the host's CA bundle is
bind-mounted over the image's for pip).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.processes import du_bytes
from modelsmith.devcluster.tools import cache_root

PREFIX = "localhost/modelsmith"
IMAGES = ("operator", "data", "trainer", "quantizer", "server")

# The base image's recipe. Change BASE_RECIPE_VERSION when the steps below change in a
# way the other fields don't show; any change makes a new key, hence a new base.
BASE_RECIPE_VERSION = 1
SUITE = "bookworm"
VARIANT = "minbase"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
DEBIAN_MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
# As Debian's own slim images: no manuals, docs (but their copyright files) or locales.
BASE_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
BASE_HOOKS = (
    # pip installs system-wide (into /usr/local), as in the official python image.
    'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
    # `pip` must resolve as a command, as the Dockerfiles call it.
    'test -e "$1/usr/bin/pip" || ln -s pip3 "$1/usr/bin/pip"',
    # Fail here, not in the first Dockerfile, if something the Dockerfiles use is missing.
    "chroot \"$1\" sh -c 'pip --version && python --version && command -v useradd'",
)
# What the official python image's config says, less what is specific to /usr/local.
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_PACKAGES = "buildah mmdebstrap runc"

Log = Callable[[str], None]


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


def images_cache() -> Path:
    return cache_root() / "images"


def source_root() -> Path:
    """The checkout this package runs from: images are built from source, not a wheel."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "images" / "operator" / "Dockerfile").is_file():
        raise DevClusterError(
            f"no images/*/Dockerfile under {root}: `modelsmith dev images` builds from a "
            "source checkout (an editable install of it)"
        )
    return root


# The base.


def base_key() -> str:
    recipe = (
        BASE_RECIPE_VERSION,
        SUITE,
        VARIANT,
        BASE_PACKAGES,
        DEBIAN_MIRRORS,
        BASE_DPKG_OPTS,
        BASE_HOOKS,
        BASE_ENV,
    )
    return f"{SUITE}-{hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]}"


def base_reference() -> str:
    return f"{PREFIX}/python-base:{base_key()}"


def base_tarball() -> Path:
    return images_cache() / f"python-base-{base_key()}.tar"


def mmdebstrap_argv(target: Path) -> list[str]:
    argv = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        "--format=tar",
        f"--include={','.join(BASE_PACKAGES)}",
        '--aptopt=Acquire::Retries "3"',
    ]
    argv += [f"--dpkgopt={opt}" for opt in BASE_DPKG_OPTS]
    argv += [f"--customize-hook={hook}" for hook in BASE_HOOKS]
    return [*argv, SUITE, str(target), *DEBIAN_MIRRORS]


def ensure_base(log: Log = print) -> str:
    """Make the base image unless buildah already has it; returns its reference."""
    ref = base_reference()
    if image_exists(ref):
        return ref
    tarball = base_tarball()
    if not tarball.is_file():
        require_tools("mmdebstrap")
        partial = tarball.with_name(tarball.name + ".partial")
        log_path = _log_path("python-base", base_key())
        packages = " ".join(BASE_PACKAGES)
        log(f"python-base: mmdebstrap {SUITE} {VARIANT} + {packages} (log: {log_path})")
        started = time.monotonic()
        try:
            _run_logged(mmdebstrap_argv(partial), log_path, "mmdebstrap (the base image)")
            partial.rename(tarball)
        finally:
            partial.unlink(missing_ok=True)
        log(
            f"python-base: {tarball} ({human_size(tarball.stat().st_size)}) "
            f"in {time.monotonic() - started:.1f} s"
        )
    started = time.monotonic()
    _import_base(tarball, ref)
    log(f"python-base: imported as {ref} in {time.monotonic() - started:.1f} s")
    return ref


def _import_base(tarball: Path, ref: str) -> None:
    """FROM scratch + ADD of the tarball, with the official python image's config."""
    require_tools("buildah")
    log_path = _log_path("python-base-import", base_key())
    out = _run_logged(
        ["buildah", "from", "scratch"], log_path, "buildah from scratch", capture=True
    )
    container = out.strip().splitlines()[-1]
    try:
        _run_logged(["buildah", "add", container, str(tarball), "/"], log_path, "buildah add")
        config = ["buildah", "config", "--cmd", '["python3"]']
        for env in BASE_ENV:
            config += ["--env", env]
        config += ["--label", f"io.modelsmith.base-recipe={base_key()}", container]
        _run_logged(config, log_path, "buildah config")
        _run_logged(["buildah", "commit", "--rm", container, ref], log_path, "buildah commit")
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        raise


# Content keys of the images.


def ignore_patterns(root: Path) -> list[str]:
    """The .dockerignore patterns, in the subset of its syntax this module understands."""
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!") or "/" in line.removeprefix("**/").strip("/"):
            raise DevClusterError(
                f"{path}: {line!r}: only NAME and **/NAME patterns are understood by "
                "modelsmith.devcluster.images, which hashes the same files the build copies"
            )
        patterns.append(line.strip("/"))
    return patterns


def is_ignored(relpath: str, patterns: Sequence[str]) -> bool:
    parts = relpath.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            name = pattern.removeprefix("**/")
            if any(fnmatchcase(part, name) for part in parts):
                return True
        elif fnmatchcase(parts[0], pattern):
            return True
    return False


def _instructions(dockerfile: str) -> Iterable[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    logical = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.partition(" ")
        yield word.upper(), rest.strip()
        logical = ""


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths a Dockerfile's COPY and ADD instructions read."""
    sources: list[str] = []
    for word, args in _instructions(dockerfile):
        if word not in {"COPY", "ADD"}:
            continue
        tokens = [str(t) for t in json.loads(args)] if args.startswith("[") else shlex.split(args)
        if any(t.startswith("--from") for t in tokens):
            continue  # from another stage, not from the context
        paths = [t for t in tokens if not t.startswith("--")]
        sources += [p.rstrip("/") or "." for p in paths[:-1]]
    return sources


def context_files(root: Path, sources: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """Every file the COPY sources bring in, as sorted paths relative to ``root``."""
    found: set[str] = set()
    for source in sources:
        path = root / source
        if not path.exists():
            raise DevClusterError(f"COPY {source}: not in {root}")
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for candidate in candidates:
            rel = candidate.relative_to(root).as_posix()
            if candidate.is_file() and not is_ignored(rel, patterns):
                found.add(rel)
    return sorted(found)


def dockerfile_path(root: Path, name: str) -> Path:
    return root / "images" / name / "Dockerfile"


def image_tag(name: str, root: Path, base: str) -> str:
    """A hash of everything the image is built from; the same tree gives the same tag."""
    dockerfile = dockerfile_path(root, name)
    text = dockerfile.read_text()
    patterns = ignore_patterns(root)
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode() + data)

    add("base", base.encode())
    add("dockerfile", text.encode())
    ignore = root / ".dockerignore"
    add(".dockerignore", ignore.read_bytes() if ignore.is_file() else b"")
    for rel in context_files(root, copy_sources(text), patterns):
        path = root / rel
        mode = "x" if os.access(path, os.X_OK) else "-"
        add(f"file {rel} {mode}", path.read_bytes())
    return digest.hexdigest()[:16]


def bud_argv(
    name: str, root: Path, tag: str, base: str, *, ca_bundle: str | None = CA_BUNDLE
) -> list[str]:
    argv = ["buildah", "bud", "--runtime", "runc", "--layers", "--network", "host"]
    if ca_bundle is not None:  # outbound TLS is intercepted: pip must trust the host's CAs
        argv += ["-v", f"{ca_bundle}:{ca_bundle}:ro"]
    argv += ["--build-arg", f"PYTHON_IMAGE={base}"]
    argv += ["-f", str(dockerfile_path(root, name)), "-t", f"{PREFIX}/{name}:{tag}", str(root)]
    return argv


# buildah.


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise DevClusterError(
            f"{', '.join(missing)} not found on PATH: the dev images are built without a "
            f"Docker engine, with buildah on a base made by mmdebstrap. On Debian/Ubuntu: "
            f"apt-get install -y --no-install-recommends {DEBIAN_PACKAGES}"
        )


def _inspect(reference: str) -> dict[str, object] | None:
    require_tools("buildah")
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", reference],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def image_exists(reference: str) -> bool:
    return _inspect(reference) is not None


def image_info(reference: str) -> tuple[str, int]:
    """(image id, size in bytes): the sum of its uncompressed layers, as stored."""
    data = _inspect(reference)
    if data is None:
        raise DevClusterError(f"buildah inspect {reference}: no such image")
    manifest = json.loads(str(data.get("Manifest") or "{}"))
    size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))
    return str(data.get("FromImageID", "")), size


def layer_bytes(references: Iterable[str]) -> int:
    """What these images' layers take in the build store, a shared layer once.

    The rest of the store is the cache of older builds (`prune` reclaims it), which
    depends on the machine's history, not on the images.
    """
    sizes: dict[str, int] = {}
    for reference in references:
        data = _inspect(reference)
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


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _log_path(name: str, key: str) -> Path:
    path = images_cache() / "logs" / f"{name}-{key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _run_logged(argv: list[str], log_path: Path, what: str, *, capture: bool = False) -> str:
    """Run with its output appended to ``log_path``; with ``capture``, return its stdout."""
    with log_path.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.run(
            argv,
            check=False,
            stdout=subprocess.PIPE if capture else out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
        text = proc.stdout.decode(errors="replace") if capture else ""
        out.write(text)
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").splitlines(keepends=True)
        raise DevClusterError(
            f"{what} failed (exit {proc.returncode}); full log: {log_path}\n{''.join(lines[-20:])}"
        )
    return text


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
                log_path = _log_path(name, tag)
                log(f"{name}: building {ref.reference} (log: {log_path})")
                started = time.monotonic()
                argv = bud_argv(name, root, tag, base, ca_bundle=ca_bundle)
                _run_logged(argv, log_path, f"building the {name} image")
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
    _run_logged(argv, _log_path(f"push-{ref.name}", tag or ref.tag), "buildah push")
    pushed = push_reference(ref, registry, tag)
    log(f"{ref.name}: pushed {pushed} in {time.monotonic() - started:.1f} s")
    return pushed


# Reclaiming the build store.


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
    data = _inspect(reference) or {}
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
    keep = {base} | {ImageRef(n, image_tag(n, root, base)).reference for n in IMAGES}
    with (images_cache() / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # not while a build uses the cache
        before = store_bytes()
        stale = stale_images(keep)
        if stale:
            subprocess.run(["buildah", "rmi", "--force", *stale], capture_output=True, check=False)
        freed = max(0, before - store_bytes())
    log(f"build store: removed {len(stale)} stale images, {human_size(freed)} given back")
    return freed
