"""Print the third-party requirements a pyproject.toml declares, one per line.

    python3 pyproject_deps.py PYPROJECT [EXTRA ...] > requirements.txt

The project's own dependencies come first, then those of each EXTRA; an extra that
names the project itself (``all = ["modelsmith-runtime[train,serve]"]``) expands to
those extras. The images run this in a layer that depends on pyproject.toml alone and
`pip install -r` what it prints, so the heavy dependencies are cached across source
changes; the project itself is installed later with ``--no-deps``. Standard library
only (tomllib: Python >= 3.11), as it runs in the bare base image.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def requirements(pyproject: dict[str, object], extras: list[str]) -> list[str]:
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

    add(list(project.get("dependencies", [])))
    for extra in extras:
        add_extra(extra)
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    data = tomllib.loads(Path(argv[0]).read_text())
    for req in requirements(data, argv[1:]):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
