"""Print the third-party requirements a pyproject.toml declares, one per line.

    python3 pyproject_deps.py PYPROJECT [EXTRA ...] [--minus GROUP ...] > requirements.txt

The project's own dependencies come first, then those of each EXTRA; an extra that
names the project itself (``all = ["modelsmith-runtime[train,serve]"]``) expands to
those extras. ``--minus`` drops what earlier layers installed: each GROUP is an extra,
or ``project`` for the project's own dependencies.

Why layers: the images install their dependencies in steps that run from the most
shared to the least (the project's own dependencies in every workload image, then
torch, then the ``hf`` extra in the three torch images, then the image's own extras),
each from a file this prints in a separate build stage. A step whose file is the same
is the same layer in every image, so the build store, the registry and the node hold
it once; and as the files depend on pyproject.toml alone, a source change reuses them
all. The project itself is installed later with ``--no-deps``. Standard library only
(tomllib: Python >= 3.11), as it runs in the bare base image.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def requirements(
    pyproject: dict[str, object], extras: list[str], minus: Sequence[str] = ()
) -> list[str]:
    """The project's dependencies and the extras', less those of the ``minus`` groups."""
    wanted = _collect(pyproject, extras)
    if not minus:
        return wanted
    groups = [g for g in minus if g != "project"]
    installed = set(_collect(pyproject, groups, own_dependencies="project" in minus))
    return [req for req in wanted if req not in installed]


def _collect(
    pyproject: dict[str, object], extras: Sequence[str], *, own_dependencies: bool = True
) -> list[str]:
    project = pyproject.get("project")
    if not isinstance(project, dict):
        raise SystemExit("pyproject_deps: no [project] table")
    own = _name(str(project["name"]))
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            if _name(req) == own:  # a self-reference: expand its extras
                inner = re.search(r"\[([^\]]*)\]", req)
                for extra in (inner.group(1).split(",") if inner else []):
                    add_extra(extra.strip())
            elif req not in out:
                out.append(req)

    def add_extra(extra: str) -> None:
        if extra in seen_extras:
            return
        if extra not in optional:
            raise SystemExit(f"pyproject_deps: {own} has no extra {extra!r}")
        seen_extras.add(extra)
        add(optional[extra])

    if own_dependencies:
        add(list(project.get("dependencies", [])))
    for extra in extras:
        add_extra(extra)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    data = tomllib.loads(Path(argv[0]).read_text())
    args = argv[1:]
    cut = args.index("--minus") if "--minus" in args else len(args)
    for req in requirements(data, args[:cut], args[cut + 1 :]):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
