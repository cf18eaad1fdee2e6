"""Where artifacts are in a pod, and the publish protocol's rules, in-process.

The stages' own runs against S3 are in test_storage_s3.py; these are the rules
themselves, each on the storage it is about: tmp dirs standing in for mounted claims,
moto's S3 over HTTP, and fsspec's memory:// and local:// for other backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelsmith.contract import COMPLETION_MARKER, MOUNTS_ENV, Manifest, Producer
from modelsmith_runtime import storage
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.manifest import read_manifest
from modelsmith_runtime.uris import local_path, open_fs
from tests.workloads.s3 import S3

MOUNTS = {
    "pvc://data": "/mnt/modelsmith/rw/data",
    "pvc://data/shards/tiny": "/mnt/modelsmith/ro/data/shards/tiny",
    "s3://b/models/x": "/mnt/modelsmith/model",
}


def _producer(attempt: int = 0) -> Producer:
    return Producer(kind="Test", name="t", uid="uid-1", attempt=attempt)


def _publish(uri: str, content: bytes = b"weights", attempt: int = 0) -> storage.Published:
    with storage.publish(uri, {"kind": "Test"}, producer=_producer(attempt)) as (staging, out):
        (staging / "sub").mkdir()
        (staging / "sub" / "weights.bin").write_bytes(content)
        (staging / "config.json").write_text("{}")
    return out


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pvc://data", "/mnt/modelsmith/rw/data"),
        ("pvc://data/models/m", "/mnt/modelsmith/rw/data/models/m"),
        ("pvc://data/shards/tiny/", "/mnt/modelsmith/ro/data/shards/tiny"),
        ("pvc://data/shards/tiny/index.json", "/mnt/modelsmith/ro/data/shards/tiny/index.json"),
        ("pvc://data/shards/tinyish", "/mnt/modelsmith/rw/data/shards/tinyish"),  # "/" boundary
        ("s3://b/models/x", "/mnt/modelsmith/model"),
        ("s3://b/models/x/config.json", "/mnt/modelsmith/model/config.json"),
        ("s3://b/models/xy", None),  # not under the fetched model: remote
        ("s3://b/other", None),
        ("file:///srv/data", "/srv/data"),
        ("/srv/data", "/srv/data"),
    ],
)
def test_a_uri_resolves_through_its_longest_mounted_prefix(
    uri: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MOUNTS_ENV, json.dumps(MOUNTS))
    assert local_path(uri) == (Path(expected) if expected else None)


def test_a_pvc_uri_that_is_not_mounted_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MOUNTS_ENV, json.dumps(MOUNTS))
    for uri in ("pvc://other/model", "pvc://database/x"):
        with pytest.raises(BadInputError) as info:
            local_path(uri)
        assert info.value.reason == "NotMounted"
        assert f"{uri} is not mounted in this pod" in info.value.message
    monkeypatch.delenv(MOUNTS_ENV)
    with pytest.raises(BadInputError, match="not mounted"):
        storage.open_artifact("pvc://data/model", "model")


@pytest.mark.parametrize("raw", ["{not json", '["pvc://data"]', '{"pvc://data": 3}'])
def test_an_invalid_mounts_table_is_bad_input_naming_the_variable(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MOUNTS_ENV, raw)
    with pytest.raises(BadInputError) as info:
        local_path("pvc://data/x")
    assert info.value.reason == "InvalidEnvironment"
    assert MOUNTS_ENV in info.value.message


def test_publishing_into_a_mounted_claim_reports_the_pvc_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = tmp_path / "rw" / "data"
    monkeypatch.setenv(MOUNTS_ENV, json.dumps({"pvc://data": str(claim)}))
    out = _publish("pvc://data/runs/model")
    assert out.uri == "pvc://data/runs/model"
    assert out.size_bytes == len(b"weights") + len(b"{}")
    assert (claim / "runs" / "model" / "sub" / "weights.bin").read_bytes() == b"weights"
    assert [p.name for p in (claim / "runs").iterdir()] == ["model"], "no staging left behind"
    manifest = Manifest.model_validate_json((claim / "runs/model" / COMPLETION_MARKER).read_text())
    assert manifest.digest == out.digest
    assert manifest.producer == _producer()
    assert {(f.path, f.size) for f in manifest.files} == {
        ("config.json", 2),
        ("sub/weights.bin", 7),
    }
    assert storage.open_artifact("pvc://data/runs/model", "model") == claim / "runs" / "model"


def test_a_retry_publishes_beside_a_complete_artifact_and_reuses_a_half_written_place(
    tmp_path: Path,
) -> None:
    first = _publish(str(tmp_path / "model"), b"first")
    before = (tmp_path / "model" / COMPLETION_MARKER).read_bytes()

    second = _publish(str(tmp_path / "model"), b"second", attempt=1)
    assert second.uri == f"{tmp_path}/model-attempt-1"
    third = _publish(str(tmp_path / "model"), b"third", attempt=1)
    assert third.uri == f"{tmp_path}/model-attempt-1-2"
    assert (tmp_path / "model" / COMPLETION_MARKER).read_bytes() == before
    assert (tmp_path / "model" / "sub" / "weights.bin").read_bytes() == b"first"
    assert storage.artifact_digest(tmp_path / "model") == first.digest

    (tmp_path / "half" / "sub").mkdir(parents=True)  # what a crash mid-copy could leave
    (tmp_path / "half" / "sub" / "weights.bin").write_bytes(b"par")
    reused = _publish(str(tmp_path / "half"), b"whole", attempt=2)
    assert reused.uri == str(tmp_path / "half")
    assert (tmp_path / "half" / "sub" / "weights.bin").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "half",
        "model",
        "model-attempt-1",
        "model-attempt-1-2",
    ]


def test_a_local_artifact_is_refused_without_a_valid_marker_or_with_a_changed_file(
    tmp_path: Path,
) -> None:
    _publish(str(tmp_path / "model"))
    (tmp_path / "model" / "sub" / "weights.bin").write_bytes(b"truncat")  # same size: not hashed
    storage.open_artifact(str(tmp_path / "model"), "model")
    (tmp_path / "model" / "sub" / "weights.bin").write_bytes(b"short")
    with pytest.raises(BadInputError) as info:
        storage.open_artifact(str(tmp_path / "model"), "model")
    assert info.value.reason == "CorruptArtifact" and "sub/weights.bin" in info.value.message
    for marker in ("", "{}", "not json"):
        (tmp_path / "model" / COMPLETION_MARKER).write_text(marker)
        with pytest.raises(BadInputError) as info:
            storage.open_artifact(str(tmp_path / "model"), "model")
        assert info.value.reason == "IncompleteArtifact", marker


@pytest.mark.parametrize("scheme", ["memory", "local"])
def test_publish_to_a_url_creates_the_folders_it_needs_and_marks_it_complete(
    scheme: str, tmp_path: Path
) -> None:
    where = f"{tmp_path}/not/yet/there" if scheme == "local" else f"/bucket/{tmp_path.name}/m"
    uri = f"{scheme}://{where}"
    out = _publish(uri)
    assert out.uri == uri
    opened = storage.open_artifact(uri, "model")
    assert (opened / "sub" / "weights.bin").read_bytes() == b"weights"
    assert storage.artifact_digest(opened) == out.digest
    assert _publish(uri, attempt=3).uri == f"{uri}-attempt-3"


def test_an_unpublished_url_is_refused() -> None:
    with pytest.raises(BadInputError) as info:
        storage.open_artifact("memory://bucket/never", "dataset")
    assert info.value.reason == "IncompleteArtifact"


def test_s3_goes_to_the_endpoint_the_environment_names(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, path = open_fs(s3.uri("a/b"))
    assert (fs.endpoint_url, path) == (s3.endpoint, f"{s3.bucket}/a/b")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # S3's own wins
    assert open_fs(s3.uri("a"))[0].endpoint_url == "http://127.0.0.1:9"


def test_a_missing_backend_is_bad_input_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if the image lacked it
    with pytest.raises(BadInputError) as info:
        open_fs("gs://bucket/model")
    assert info.value.reason == "MissingBackend" and "gcsfs" in info.value.message


def test_a_reader_that_listed_the_prefix_before_the_marker_still_sees_it(s3: S3) -> None:
    out = _publish(s3.uri("model"))
    marker = s3.get(f"model/{COMPLETION_MARKER}")
    s3.client().delete_object(Bucket=s3.bucket, Key=f"model/{COMPLETION_MARKER}")
    fs, root = open_fs(s3.uri("model"))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root)) == ["config.json", "sub"]
    assert not fs.exists(f"{root}/{COMPLETION_MARKER}")
    s3.put(f"model/{COMPLETION_MARKER}", marker)  # the writer finishes meanwhile
    assert fs.exists(f"{root}/{COMPLETION_MARKER}")
    assert COMPLETION_MARKER in [p.rsplit("/", 1)[-1] for p in fs.ls(root)]
    assert read_manifest(s3.uri("model")) is not None
    assert storage.artifact_digest(storage.open_artifact(s3.uri("model"), "model")) == out.digest


def test_a_downloaded_copy_is_gone_when_its_process_exits(s3: S3, tmp_path: Path) -> None:
    _publish(s3.uri("model"))
    read = (
        "import sys; from modelsmith_runtime import storage; "
        "print(storage.open_artifact(sys.argv[1], 'model'))"
    )
    env = {**os.environ, **s3.env, "TMPDIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", read, s3.uri("model")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    opened = Path(run.stdout.strip())
    assert opened.parent == tmp_path and opened.name.startswith("artifact-")
    assert not opened.exists()


def test_a_download_checks_every_listed_file_and_takes_nothing_else(s3: S3) -> None:
    out = _publish(s3.uri("model"))
    s3.put("model/leftover.bin", b"of a killed upload")
    opened = storage.open_artifact(s3.uri("model"), "model")
    assert sorted(p.relative_to(opened).as_posix() for p in opened.rglob("*") if p.is_file()) == [
        COMPLETION_MARKER,
        "config.json",
        "sub/weights.bin",
    ]
    assert storage.artifact_digest(opened) == out.digest
    for changed in (b"weightz", b"weights, and more"):  # content, then size
        s3.put("model/sub/weights.bin", changed)
        with pytest.raises(BadInputError) as info:
            storage.open_artifact(s3.uri("model"), "model")
        assert info.value.reason == "CorruptArtifact"
        assert "sub/weights.bin" in info.value.message
    s3.client().delete_object(Bucket=s3.bucket, Key="model/sub/weights.bin")
    with pytest.raises(BadInputError, match="missing") as info:
        storage.open_artifact(s3.uri("model"), "model")
    assert info.value.reason == "CorruptArtifact"


def test_a_marker_of_an_earlier_version_is_checked_by_its_digest_alone(s3: S3) -> None:
    out = _publish(s3.uri("new"))
    for key in ("config.json", "sub/weights.bin"):
        s3.put(f"old/{key}", s3.get(f"new/{key}"))
    s3.put(f"old/{COMPLETION_MARKER}", json.dumps({"digest": out.digest, "kind": "T"}).encode())
    opened = storage.open_artifact(s3.uri("old"), "model")
    assert (opened / "sub" / "weights.bin").read_bytes() == b"weights"
    s3.put("old/sub/weights.bin", b"other")
    with pytest.raises(BadInputError) as info:
        storage.open_artifact(s3.uri("old"), "model")
    assert info.value.reason == "CorruptArtifact"


def test_a_retry_on_s3_publishes_beside_and_a_part_is_replaced_in_place(s3: S3) -> None:
    first = _publish(s3.uri("model"), b"first")
    keys = s3.keys("model/")
    second = _publish(s3.uri("model"), b"second", attempt=1)
    assert second.uri == s3.uri("model-attempt-1")
    assert s3.keys("model/") == keys
    assert s3.get("model/sub/weights.bin") == b"first"
    assert read_manifest(s3.uri("model")).digest == first.digest  # type: ignore[union-attr]

    with storage.publish(s3.uri("model.parts/w-0"), {"fingerprint": "a"}, replace=True) as (st, _):
        (st / "part").write_bytes(b"a")
    with storage.publish(s3.uri("model.parts/w-0"), {"fingerprint": "b"}, replace=True) as (st, _):
        (st / "part").write_bytes(b"b")
    assert getattr(read_manifest(s3.uri("model.parts/w-0")), "fingerprint", None) == "b"
    assert s3.get("model.parts/w-0/part") == b"b"
