"""What each dev image is built from, and the content tag that names it.

Each image is tagged ``localhost/modelsmith/<name>:<hash>`` of what it is built from:
the Dockerfile stages its target needs, every path their COPY instructions name, less
what .dockerignore leaves out, and the base. So an unchanged tree reuses the image and
tests can name it. The operator image has its own Dockerfile; the four workload images
are the targets of one (images/workloads.Dockerfile), which writes the stages they
share once, so that the images share those layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from modelsmith.devcluster.errors import DevClusterError

WORKLOADS = ("data", "trainer", "quantizer", "server")
IMAGES = ("operator", *WORKLOADS)
WORKLOADS_DOCKERFILE = "images/workloads.Dockerfile"


def source_root() -> Path:
    """The checkout this package runs from: images are built from source, not a wheel."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "images" / "operator" / "Dockerfile").is_file():
        raise DevClusterError(
            f"no images/operator/Dockerfile under {root}: `modelsmith dev images` builds "
            "from a source checkout (an editable install of it)"
        )
    return root


def dockerfile_path(root: Path, name: str) -> Path:
    if name in WORKLOADS:
        return root / WORKLOADS_DOCKERFILE
    return root / "images" / name / "Dockerfile"


def build_target(name: str) -> str | None:
    """The Dockerfile stage that is the image (``--target``); None for the last one."""
    return name if name in WORKLOADS else None


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
                "modelsmith.devcluster.imagecontext, which hashes the same files the build "
                "copies"
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


def instructions(dockerfile: str) -> Iterable[tuple[str, str]]:
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


def _stages(dockerfile: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first FROM, and each stage's (name, text), in order.

    A stage is named by its ``AS`` name, or by its index as Dockerfiles allow. The
    comments just above a FROM are the next stage's.
    """
    preamble: list[str] = []
    stages: list[tuple[str, list[str]]] = []
    pending: list[str] = []  # comments and blank lines, until what follows them shows
    continued = False
    for raw in dockerfile.splitlines(keepends=True):
        words, stripped = raw.split(), raw.strip()
        if not continued and (not stripped or stripped.startswith("#")):
            pending.append(raw)
            continue
        if not continued and words[0].upper() == "FROM":
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else ""
            stages.append((name or str(len(stages)), []))
        (stages[-1][1] if stages else preamble).extend([*pending, raw])
        pending = []
        continued = stripped.endswith("\\") or (continued and stripped.startswith("#"))
    (stages[-1][1] if stages else preamble).extend(pending)
    return "".join(preamble), [(name, "".join(lines)) for name, lines in stages]


def _stage_needs(text: str, names: set[str]) -> set[str]:
    """The other stages a stage builds on: its FROM, and its COPY --from sources."""
    needs: set[str] = set()
    for word, args in instructions(text):
        tokens = args.split()
        if word == "FROM" and tokens and tokens[0] in names:
            needs.add(tokens[0])
        elif word in {"COPY", "ADD"}:
            for token in tokens:
                source = token.removeprefix("--from=")
                if token.startswith("--from=") and source in names:
                    needs.add(source)
    return needs


def target_text(dockerfile: str, target: str | None) -> str:
    """The part of a Dockerfile that building ``target`` reads: the ARGs before the
    first FROM and the stages the target needs, in order; all of it without a target."""
    if target is None:
        return dockerfile
    preamble, stages = _stages(dockerfile)
    texts = dict(stages)
    if target not in texts:
        raise DevClusterError(f"no stage {target!r} in the Dockerfile")
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += _stage_needs(texts[name], set(texts))
    return preamble + "".join(text for name, text in stages if name in needed)


def copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths a Dockerfile's COPY and ADD instructions read."""
    sources: list[str] = []
    for word, args in instructions(dockerfile):
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


def image_tag(name: str, root: Path, base: str) -> str:
    """A hash of everything the image is built from; the same tree gives the same tag."""
    target = build_target(name)
    text = target_text(dockerfile_path(root, name).read_text(), target)
    patterns = ignore_patterns(root)
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode() + data)

    add("base", base.encode())
    if target is not None:  # (the operator's tag reads as before: no target)
        add("target", target.encode())
    add("dockerfile", text.encode())
    ignore = root / ".dockerignore"
    add(".dockerignore", ignore.read_bytes() if ignore.is_file() else b"")
    for rel in context_files(root, copy_sources(text), patterns):
        path = root / rel
        mode = "x" if os.access(path, os.X_OK) else "-"
        add(f"file {rel} {mode}", path.read_bytes())
    return digest.hexdigest()[:16]
