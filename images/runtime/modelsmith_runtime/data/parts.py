"""How the workers hand their share to worker 0: through the storage the output is on.

An Indexed Job's pods share nothing but that storage, so the protocol uses only what
`storage` already guarantees (a directory is complete once its marker is there):

1. Worker i of W runs the map half over its slice and publishes the result, a *part*,
   at ``<output>.parts/worker-<i>`` with `storage.publish`; the marker carries the
   run's fingerprint (spec, inputs, output, worker count, input file sizes).
2. Workers other than 0 then exit; their Result carries their slice's counts only.
3. Worker 0 polls until every part is complete with this run's fingerprint (a part
   left by an earlier run with another spec or input is ignored, not used), then runs
   the reduce, publishes the artifact at ``<output>`` and deletes ``<output>.parts``.
   If a part is still missing after ``MODELSMITH_DATA_PARTS_TIMEOUT`` seconds it gives
   up with a TransientError, so the Job retries it.

A retried worker whose part is already complete with the same fingerprint does not
redo its map work; one whose part is stale replaces it (a part is no artifact anyone
else reads, so it is not kept immutable), unpublishing it before any file changes.
Nothing of this exists when there is one worker: the map result goes to the reduce in
memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modelsmith.contract import Producer, TaskConfig
from modelsmith_runtime.data.readers import SourceFiles
from modelsmith_runtime.data.stats import Stats
from modelsmith_runtime.errors import TransientError
from modelsmith_runtime.manifest import read_manifest
from modelsmith_runtime.storage import open_artifact, publish
from modelsmith_runtime.uris import local_path, open_fs

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 7200.0
POLL_S = 1.0
_DOCUMENTS = "documents.parquet"
_SIGNATURES = "signatures.npy"
_STATS = "stats.json"


@dataclass
class Part:
    """What the map half of one worker produced: its surviving documents and counts."""

    keys: np.ndarray[Any, Any]
    """(N, 3) int64: source, file, position — the corpus order."""
    texts: list[str]
    sizes: np.ndarray[Any, Any]
    """Raw UTF-8 bytes per document, for the byte counts of later removals."""
    hashes: list[bytes]
    signatures: np.ndarray[Any, Any] | None
    """(N, width) uint32 near-dedup signatures: MinHash (width = permutations) or SimHash
    (the 64-bit fingerprint as two halves); None when near dedup is off."""
    stats: Stats


def concat(parts: list[Part]) -> Part:
    """All parts as one, sorted into corpus order."""
    keys = np.concatenate([p.keys for p in parts]).reshape(-1, 3)
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    texts = [t for p in parts for t in p.texts]
    hashes = [h for p in parts for h in p.hashes]
    sigs = [p.signatures for p in parts if p.signatures is not None]
    stats = Stats()
    for part in parts:
        stats.merge(part.stats)
    return Part(
        keys=keys[order],
        texts=[texts[i] for i in order.tolist()],
        sizes=np.concatenate([p.sizes for p in parts])[order],
        hashes=[hashes[i] for i in order.tolist()],
        signatures=np.concatenate(sigs)[order] if len(sigs) == len(parts) else None,
        stats=stats,
    )


def fingerprint(config: TaskConfig, workers: int, sources: list[SourceFiles]) -> str:
    raw = {
        "spec": config.spec,
        "inputs": config.inputs,
        "output": config.output,
        "workers": workers,
        "sources": [s.fingerprint() for s in sources],
    }
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def parts_root(output: str) -> str:
    return output.rstrip("/") + ".parts"


def part_uri(output: str, worker: int) -> str:
    return f"{parts_root(output)}/worker-{worker:05d}"


def is_complete(uri: str, run: str) -> bool:
    manifest = read_manifest(uri)
    return manifest is not None and getattr(manifest, "fingerprint", None) == run


def save_part(part: Part, uri: str, run: str, worker: int, producer: Producer) -> None:
    meta = {"fingerprint": run, "worker": worker}
    with publish(uri, meta, producer=producer, replace=True) as (staging, _):
        table = pa.table(
            {
                "source": part.keys[:, 0],
                "file": part.keys[:, 1],
                "position": part.keys[:, 2],
                "size": part.sizes,
                "hash": pa.array(part.hashes, pa.binary(16)),
                "text": pa.array(part.texts, pa.large_string()),
            }
        )
        pq.write_table(table, staging / _DOCUMENTS)
        if part.signatures is not None:
            np.save(staging / _SIGNATURES, part.signatures)
        (staging / _STATS).write_text(json.dumps(part.stats.to_json()))


def load_part(uri: str) -> Part:
    root = open_artifact(uri, "worker part")
    table = pq.read_table(root / _DOCUMENTS)
    keys = np.stack(
        [table.column(c).to_numpy().astype(np.int64) for c in ("source", "file", "position")],
        axis=1,
    ).reshape(-1, 3)
    sig_path = root / _SIGNATURES
    part = Part(
        keys=keys,
        texts=table.column("text").to_pylist(),
        sizes=table.column("size").to_numpy().astype(np.int64),
        hashes=table.column("hash").to_pylist(),
        signatures=np.load(sig_path) if sig_path.exists() else None,
        stats=Stats.from_json(json.loads((root / _STATS).read_text())),
    )
    if local_path(uri) is None:
        shutil.rmtree(root, ignore_errors=True)
    return part


def load_stats(uri: str) -> Stats:
    root = open_artifact(uri, "worker part")
    stats = Stats.from_json(json.loads((root / _STATS).read_text()))
    if local_path(uri) is None:
        shutil.rmtree(root, ignore_errors=True)
    return stats


def _timeout() -> float:
    raw = os.environ.get("MODELSMITH_DATA_PARTS_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S


def wait_for_parts(output: str, workers: int, run: str) -> list[str]:
    """The URIs of every worker's part, once all are complete; TransientError on timeout."""
    uris = [part_uri(output, i) for i in range(workers)]
    timeout = _timeout()
    deadline = time.monotonic() + timeout
    missing = uris
    while True:
        still = [uri for uri in missing if not is_complete(uri, run)]
        if not still:
            return uris
        if time.monotonic() >= deadline:
            raise TransientError(
                "WorkersTimeout",
                f"waited {timeout:.0f}s for {len(still)} worker part(s), first {still[0]}",
            )
        if still != missing or missing is uris:
            log.info("waiting for %d of %d worker parts", len(still), workers)
        missing = still
        time.sleep(POLL_S)


def remove_parts(output: str) -> None:
    root = parts_root(output)
    path = local_path(root)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, remote = open_fs(root)
    if fs.exists(remote):
        fs.rm(remote, recursive=True)
