"""The dev images' base: Python on Debian, made with mmdebstrap, as no image can be pulled.

No base image can be pulled on the machines this project runs on, and there is no
Docker daemon. So the base is made from Debian packages with mmdebstrap (bookworm,
minbase, Python 3.11 with pip; PEP 668's EXTERNALLY-MANAGED marker removed so pip
installs system-wide, as it does in the official python image) and imported into
buildah's storage as ``localhost/modelsmith/python-base:<key>``. The key is a hash of
its recipe (suite, packages, mirrors, hooks); its tarball is cached under
``~/.cache/modelsmith/images`` and the image skipped when it exists.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from modelsmith.devcluster.buildah import (
    PREFIX,
    Log,
    human_size,
    image_exists,
    images_cache,
    log_path,
    require_tools,
    run_logged,
)

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
        log_file = log_path("python-base", base_key())
        packages = " ".join(BASE_PACKAGES)
        log(f"python-base: mmdebstrap {SUITE} {VARIANT} + {packages} (log: {log_file})")
        started = time.monotonic()
        try:
            run_logged(mmdebstrap_argv(partial), log_file, "mmdebstrap (the base image)")
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
    log_file = log_path("python-base-import", base_key())
    out = run_logged(["buildah", "from", "scratch"], log_file, "buildah from scratch", capture=True)
    container = out.strip().splitlines()[-1]
    try:
        run_logged(["buildah", "add", container, str(tarball), "/"], log_file, "buildah add")
        config = ["buildah", "config", "--cmd", '["python3"]']
        for env in BASE_ENV:
            config += ["--env", env]
        config += ["--label", f"io.modelsmith.base-recipe={base_key()}", container]
        run_logged(config, log_file, "buildah config")
        run_logged(["buildah", "commit", "--rm", container, ref], log_file, "buildah commit")
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        raise
