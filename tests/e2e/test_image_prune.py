"""`modelsmith dev images --prune` against buildah's real store: what goes, what stays.

Tiny images committed on the real local base stand in for old and new builds; a
foreign image (not on our base, not in our repositories) must survive.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsmith.devcluster import buildah, imagebase, imagestore

REPO = f"{buildah.PREFIX}/prunetest"
FOREIGN = "localhost/someone-else/prunetest:1"


def _buildah(*args: str) -> str:
    return subprocess.run(
        ["buildah", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _commit_on(parent: str, name: str | None, content: str, tmp: Path) -> str:
    """An image one small layer above ``parent``; untagged when ``name`` is None."""
    container = _buildah("from", "--pull=never", parent)
    try:
        (tmp / "file").write_text(content)
        _buildah("copy", container, str(tmp / "file"), "/prunetest")
        return _buildah("commit", "--quiet", container, *([name] if name else []))
    finally:
        _buildah("rm", container)


@pytest.fixture
def committed(tmp_path: Path) -> Iterator[dict[str, str]]:
    base = imagebase.ensure_base()
    made: dict[str, str] = {}
    try:
        made["old"] = _commit_on(base, f"{REPO}:old", "old", tmp_path)
        made["old-step"] = _commit_on(base, None, "a cached step of the old build", tmp_path)
        time.sleep(1.1)  # the newest is told by its creation time, to the second
        made["new-step"] = _commit_on(base, None, "a cached step of the new build", tmp_path)
        made["new"] = _commit_on(made["new-step"], f"{REPO}:new", "new", tmp_path)
        made["above-new"] = _commit_on(f"{REPO}:new", None, "not a step of new", tmp_path)
        made["foreign"] = _commit_on("scratch", FOREIGN, "not ours", tmp_path)
        yield made
    finally:
        subprocess.run(
            ["buildah", "rmi", "--force", *made.values()], capture_output=True, check=False
        )


def test_prune_removes_old_builds_and_keeps_the_newest_and_foreign_images(
    committed: dict[str, str],
) -> None:
    stale = {
        image_id[:12] for image_id in imagestore.stale_images(keep=[imagebase.base_reference()])
    }
    short = {what: image_id[:12] for what, image_id in committed.items()}
    assert short["old"] in stale, "an older content tag of our repository goes"
    assert short["old-step"] in stale, "a cached step of no kept image goes"
    assert short["new"] not in stale, "the newest of a repository stays (the next build's cache)"
    assert short["new-step"] not in stale, "a cached step of a kept image stays"
    assert short["above-new"] in stale, "an image above a kept one is not its cache"
    assert short["foreign"] not in stale, "images that are not ours are never touched"
    assert imagebase.base_reference() not in stale
