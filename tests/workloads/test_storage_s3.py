"""Every stage publishing to S3 and the next one reading from it, as real processes.

One chain (raw text -> DataPipeline -> PretrainJob -> FineTune -> QuantizeJob ->
fetch -> server) against moto over HTTP, each stage seeing nothing but a bucket and
the standard AWS variables, as in a pod; the ways publishing goes wrong: an upload
killed half-way, a retry, a file changed after publishing; and pvc:// claims mounted
where MODELSMITH_MOUNTS says. Tiny models: the point is that artifacts fit together
and their markers hold, not what they learned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelsmith.contract import COMPLETION_MARKER, MOUNTS_ENV, ExitCode, Manifest, Result
from tests.workloads.conftest import Run, run_component, task_config
from tests.workloads.s3 import S3, new_bucket
from tests.workloads.serving import serve_model
from tests.workloads.tiny_dataset import documents, evicted_pretrain, pretrain_config
from tests.workloads.tiny_model import LORA, finetune_config, instruction_records, quantize_config

CLI = [sys.executable, "-m", "modelsmith_runtime.cli"]
BASE_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _jsonl(records: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def data_config(source: str, output: str) -> dict[str, Any]:
    spec = {
        "output": {"uri": output},
        "sources": [{"uri": source, "format": "jsonl"}],
        "filters": {"length": {"minChars": 20}},
        "tokenizer": {"train": {"vocabSize": 400, "minFrequency": 2}},
        "packing": {"sequenceLength": 64, "shardSizeMb": 1},
    }
    return task_config("DataPipeline", spec, output)


def fetch(uri: str, dest: Path, workdir: Path, env: dict[str, str]) -> Run:
    dest.mkdir(parents=True, exist_ok=True)
    argv = [*CLI, "fetch", "--uri", uri, "--dest", str(dest)]
    return run_component("fetch", "{}", workdir, env=env, argv=argv)


def published(s3: S3, run: Run, uri: str, kind: str, attempt: int = 0) -> Manifest:
    """The run succeeded at ``uri``, and the marker there says what it published."""
    assert run.returncode == 0, run.output[-4000:]
    assert run.result is not None and run.result.error is None
    assert run.result.uri == uri
    key = uri.removeprefix(f"s3://{s3.bucket}/")
    manifest = Manifest.model_validate_json(s3.get(f"{key}/{COMPLETION_MARKER}"))
    assert manifest.digest == run.result.digest
    assert manifest.producer is not None
    assert (manifest.producer.kind, manifest.producer.attempt) == (kind, attempt)
    assert run.result.size_bytes == sum(f.size for f in manifest.files) > 0
    listed = {f"{key}/{f.path}" for f in manifest.files}
    assert listed <= set(s3.keys(f"{key}/")), "every listed file was uploaded"
    return manifest


def _terminated(config: dict[str, Any], workdir: Path, env: dict[str, str]) -> Run:
    """A run SIGTERMed after its third step, as an eviction would end it."""
    returncode, message, output = evicted_pretrain(config, workdir, {**BASE_ENV, **env})
    result = Result.model_validate_json(message) if message else None
    return Run(returncode, result, output)


@dataclass(frozen=True)
class Chain:
    s3: S3
    root: Path
    runs: dict[str, Run]
    uris: dict[str, str]
    published_when_evicted: list[str]


@pytest.fixture(scope="module")
def chain(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    s3 = new_bucket(s3_endpoint)
    root = tmp_path_factory.mktemp("s3-chain")
    env = s3.env
    uris = {name: s3.uri(name) for name in ("raw", "dataset", "base", "sft", "tuned", "quantized")}
    s3.put("raw/corpus.jsonl", _jsonl([{"text": t} for t in documents(600, seed=3)]))
    s3.put("sft/train.jsonl", _jsonl(instruction_records(48)))
    uris["sft"] = s3.uri("sft/train.jsonl")  # one file: taken as it is, no marker needed
    runs: dict[str, Run] = {}
    data = data_config(uris["raw"], uris["dataset"])
    runs["data"] = run_component("data", data, root / "data", env=env)
    long_run = pretrain_config(
        uris["dataset"],
        uris["base"],
        training={"steps": 1000},
        checkpoint={"intervalSteps": 500, "keepLast": 2},
    )
    runs["evicted"] = _terminated(long_run, root / "evicted", env)
    published_when_evicted = s3.keys("base/")
    resumed = pretrain_config(
        uris["dataset"],
        uris["base"],
        training={"steps": 12},
        checkpoint={"intervalSteps": 6, "keepLast": 2},
    )
    retry = {**env, "MODELSMITH_ATTEMPT": "1"}
    runs["pretrain"] = run_component("pretrain", resumed, root / "pretrain", env=retry)
    tune = finetune_config(uris["base"], uris["sft"], uris["tuned"], lora=LORA, mergeAdapter=True)
    runs["finetune"] = run_component("finetune", tune, root / "finetune", env=env)
    gate = {"maxPerplexityIncreasePercent": 50}
    quantize = quantize_config(uris["tuned"], uris["quantized"], "dynamic-int8", qualityGate=gate)
    runs["quantize"] = run_component("quantize", quantize, root / "quantize", env=env)
    runs["fetch"] = fetch(uris["quantized"], root / "served-model", root / "fetch", env)
    return Chain(s3, root, runs, uris, published_when_evicted)


def test_the_data_pipeline_reads_its_source_from_s3_and_publishes_its_shards_there(
    chain: Chain,
) -> None:
    manifest = published(chain.s3, chain.runs["data"], chain.uris["dataset"], "DataPipeline")
    paths = {f.path for f in manifest.files}
    assert {"index.json", "report.json", "tokenizer/tokenizer.json"} <= paths
    assert any(p.endswith(".bin") or p.endswith(".npy") for p in paths), paths
    assert not chain.s3.keys("dataset.parts/"), "one worker: no parts"


def test_pretraining_checkpoints_to_s3_resumes_from_there_and_publishes_the_model(
    chain: Chain,
) -> None:
    evicted = chain.runs["evicted"]
    assert evicted.returncode == ExitCode.TRANSIENT, evicted.output[-4000:]
    assert evicted.result is not None and evicted.result.checkpoint is not None
    step = evicted.result.checkpoint.step
    assert step is not None and step >= 3
    checkpoints = f"{chain.uris['base']}-checkpoints"
    assert evicted.result.checkpoint.uri == f"{checkpoints}/step-{step:08d}"  # a URI, not a path
    assert not chain.published_when_evicted, "an interrupted run publishes nothing"

    run = chain.runs["pretrain"]
    assert f"resuming from step {step} of 12 ({checkpoints}/step-{step:08d})" in run.output
    manifest = published(chain.s3, run, chain.uris["base"], "PretrainJob", attempt=1)
    files = {f.path for f in manifest.files}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    stored = chain.s3.keys("base-checkpoints/")
    assert chain.s3.get("base-checkpoints/latest").decode() == "step-00000012"
    assert "base-checkpoints/step-00000012/trainer_state.json" in stored
    assert any(k.startswith("base-checkpoints/step-00000012/") and ".distcp" in k for k in stored)


def test_fine_tuning_and_quantizing_read_their_model_from_s3_and_publish_there(
    chain: Chain,
) -> None:
    tuned = published(chain.s3, chain.runs["finetune"], chain.uris["tuned"], "FineTune")
    base = Manifest.model_validate_json(chain.s3.get(f"base/{COMPLETION_MARKER}"))
    assert getattr(tuned, "baseModel", None) == {"uri": chain.uris["base"], "digest": base.digest}
    quantized = published(chain.s3, chain.runs["quantize"], chain.uris["quantized"], "QuantizeJob")
    assert getattr(quantized, "model", None) == {"uri": chain.uris["tuned"], "digest": tuned.digest}


def test_fetch_downloads_the_model_and_the_server_loads_it_through_the_mounts_table(
    chain: Chain,
) -> None:
    run, dest = chain.runs["fetch"], chain.root / "served-model"
    assert run.returncode == 0, run.output[-4000:]
    marker = chain.s3.get(f"quantized/{COMPLETION_MARKER}")
    manifest = Manifest.model_validate_json(marker)
    assert run.result == Result(
        uri=chain.uris["quantized"],
        digest=manifest.digest,
        size_bytes=sum(f.size for f in manifest.files),
    )
    assert (dest / COMPLETION_MARKER).read_bytes() == marker
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        [COMPLETION_MARKER, *(f.path for f in manifest.files)]
    )
    # The served pod has the fetched copy and no way to the bucket: it must use the copy.
    env = {MOUNTS_ENV: json.dumps({chain.uris["quantized"]: str(dest)})}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    with serve_model(chain.uris["quantized"], workdir=chain.root / "serve", env=env) as server:
        answer = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": "tiny", "prompt": "the cat", "max_tokens": 4},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"]


UPLOAD = """
import os, sys
from pathlib import Path
from modelsmith_runtime import storage

with storage.publish(sys.argv[1], {"kind": "PretrainJob"}) as (staging, _):
    (staging / "config.json").write_text("{}")
    for i in range(int(sys.argv[2])):
        (staging / f"shard-{i:04d}.safetensors").write_bytes(os.urandom(1 << 20))
"""


def test_an_upload_killed_half_way_is_refused_downstream(s3: S3, tmp_path: Path) -> None:
    """SIGKILLed once some objects are up but not the marker: the next stage and fetch
    refuse the prefix (exit 2), though most of a model is there."""
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOAD, s3.uri("model"), "96"],
        env={**os.environ, **s3.env},
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (keys := s3.keys("model/")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no object appeared: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    keys = s3.keys("model/")
    assert keys and f"model/{COMPLETION_MARKER}" not in keys, "killed before the marker"
    assert len(keys) < 97, "killed half-way, not after the last file"

    s3.put("data.jsonl", _jsonl(instruction_records(8)))
    config = finetune_config(s3.uri("model"), s3.uri("data.jsonl"), s3.uri("tuned"))
    refused = run_component("finetune", config, tmp_path / "finetune", env=s3.env)
    fetched = fetch(s3.uri("model"), tmp_path / "dest", tmp_path / "fetch", s3.env)
    for run in (refused, fetched):
        assert run.returncode == ExitCode.BAD_INPUT, run.output[-4000:]
        assert run.result is not None and run.result.error is not None
        assert run.result.error.reason == "IncompleteArtifact"
        assert s3.uri("model") in run.result.error.message
        assert COMPLETION_MARKER in run.result.error.message
    assert not s3.keys("tuned/")
    assert not (tmp_path / "dest" / COMPLETION_MARKER).exists()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_retry_publishes_beside_a_complete_artifact_never_over_it(
    where: str, s3: S3, tmp_path: Path
) -> None:
    """Attempt 0 published, then died before reporting; attempt 1 runs the same task."""
    s3.put("raw/corpus.jsonl", _jsonl([{"text": t} for t in documents(120, seed=5)]))
    output = s3.uri("dataset") if where == "s3" else str(tmp_path / "dataset")
    config = data_config(s3.uri("raw"), output)
    first = run_component(
        "data", config, tmp_path / "a0", env={**s3.env, "MODELSMITH_ATTEMPT": "0"}
    )
    if where == "s3":
        before = {key: s3.get(key) for key in s3.keys("dataset/")}
        published(s3, first, output, "DataPipeline")
    else:
        assert first.returncode == 0 and first.result is not None, first.output[-4000:]
        assert first.result.uri == output
        before = {p: p.read_bytes() for p in Path(output).rglob("*") if p.is_file()}
    second = run_component(
        "data", config, tmp_path / "a1", env={**s3.env, "MODELSMITH_ATTEMPT": "1"}
    )
    assert second.returncode == 0, second.output[-4000:]
    assert second.result is not None and first.result is not None
    assert second.result.uri == f"{output}-attempt-1"
    assert second.result.digest == first.result.digest, "the same input makes the same data"
    if where == "s3":
        assert {key: s3.get(key) for key in s3.keys("dataset/")} == before
        published(s3, second, f"{output}-attempt-1", "DataPipeline", attempt=1)
    else:
        assert {p: p.read_bytes() for p in Path(output).rglob("*") if p.is_file()} == before
        beside = Manifest.model_validate_json(
            Path(f"{output}-attempt-1", COMPLETION_MARKER).read_text()
        )
        assert beside.producer is not None and beside.producer.attempt == 1


def test_fetch_refuses_a_file_changed_after_publishing(s3: S3, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", UPLOAD, s3.uri("model"), "2"],
        env={**os.environ, **s3.env},
        check=True,
    )
    shard = "model/shard-0001.safetensors"
    s3.put(shard, bytes(1 << 20))  # the same size, other bytes
    run = fetch(s3.uri("model"), tmp_path / "dest", tmp_path / "fetch", s3.env)
    assert run.returncode == ExitCode.BAD_INPUT, run.output[-4000:]
    assert run.result is not None and run.result.error is not None
    assert run.result.error.reason == "CorruptArtifact"
    assert "shard-0001.safetensors" in run.result.error.message
    assert not (tmp_path / "dest" / COMPLETION_MARKER).exists()


def test_a_stage_reads_and_publishes_through_the_claims_mounted_in_its_pod(
    tmp_path: Path,
) -> None:
    """pvc:// is where MODELSMITH_MOUNTS says; the Result names the claim, not the path."""
    raw, claim = tmp_path / "ro" / "corpora" / "raw", tmp_path / "rw" / "data"
    raw.mkdir(parents=True)
    (raw / "corpus.jsonl").write_bytes(_jsonl([{"text": t} for t in documents(120, seed=5)]))
    env = {MOUNTS_ENV: json.dumps({"pvc://data": str(claim), "pvc://corpora/raw": str(raw)})}
    run = run_component(
        "data", data_config("pvc://corpora/raw", "pvc://data/runs/dataset"), tmp_path / "a", env=env
    )
    assert run.returncode == 0, run.output[-4000:]
    assert run.result is not None and run.result.uri == "pvc://data/runs/dataset"
    marker = claim / "runs" / "dataset" / COMPLETION_MARKER
    manifest = Manifest.model_validate_json(marker.read_text())
    assert manifest.digest == run.result.digest
    assert run.result.size_bytes == sum(f.size for f in manifest.files)

    elsewhere = data_config("pvc://corpora/other", "pvc://data/runs/other")
    refused = run_component("data", elsewhere, tmp_path / "b", env=env)
    assert refused.returncode == ExitCode.BAD_INPUT, refused.output[-4000:]
    assert refused.result is not None and refused.result.error is not None
    assert refused.result.error.reason == "NotMounted"
    assert "pvc://corpora/other is not mounted in this pod" in refused.result.error.message
