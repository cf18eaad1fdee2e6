"""Publishing through fsspec URLs: what a bucket and a filesystem behind a URL need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime import storage
from modelsmith_runtime.errors import BadInputError


@pytest.mark.parametrize("scheme", ["memory", "local"])
def test_publish_to_a_url_creates_the_folders_it_needs_and_marks_it_complete(
    scheme: str, tmp_path: Path
) -> None:
    where = f"{tmp_path}/not/yet/there" if scheme == "local" else "/bucket/run-1/model"
    uri = f"{scheme}://{where}"
    with storage.publish(uri, {"kind": "Test"}) as (staging, _digest):
        (staging / "sub").mkdir()
        (staging / "sub" / "weights.bin").write_bytes(b"\x00\x01")
        (staging / "config.json").write_text("{}")
    opened = storage.open_artifact(uri, "model")
    assert (opened / "sub" / "weights.bin").read_bytes() == b"\x00\x01"
    marker = json.loads((opened / COMPLETION_MARKER).read_text())
    assert marker["digest"] == storage.artifact_digest(opened)


def test_an_unpublished_url_is_refused() -> None:
    with pytest.raises(BadInputError) as info:
        storage.open_artifact("memory://bucket/never", "dataset")
    assert info.value.reason == "IncompleteArtifact"
