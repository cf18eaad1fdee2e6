"""``modelsmith-runtime data``: run a DataPipeline task and publish the packed dataset.

Inputs are checked before any document is read (missing or half-written tokenizer and
reference model, missing sources), so bad input fails in seconds, before any Ray
cluster is waited for. The artifact is built inside `storage.publish`, so any error,
an empty corpus included, leaves nothing at the output URI.

Two engines share everything but the map half: ``indexed`` runs it in every worker
pod over its slice (`parts` hands the slices to worker 0), ``ray`` runs it as a Ray
Data job driven from pod 0 (`rayengine`). The reduce, tokenizer, packing and report
below are the same code for both, so both publish the same dataset.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelsmith.api.datapipeline import DataEngine, DataPipelineSpec, NearDedupMethod
from modelsmith.contract import Result
from modelsmith_runtime.data.parts import (
    Part,
    fingerprint,
    is_complete,
    load_part,
    load_stats,
    part_uri,
    remove_parts,
    save_part,
    wait_for_parts,
)
from modelsmith_runtime.data.pipeline import (
    Reduced,
    drop_off_domain,
    drop_perplexity,
    duplicate_rate,
    mixture,
    process_slice,
    reduce_parts,
)
from modelsmith_runtime.data.quality import DomainScorer, read_reference
from modelsmith_runtime.data.readers import SourceFiles, list_source
from modelsmith_runtime.data.stats import Reason, Stats
from modelsmith_runtime.data.telemetry import Telemetry
from modelsmith_runtime.data.tokenize import (
    Packed,
    TokenizerInfo,
    load_existing,
    pack,
    save_existing,
    save_trained,
    train,
)
from modelsmith_runtime.errors import BadInputError
from modelsmith_runtime.shards import FORMAT, REPORT, TOKENIZER, ShardWriter, source_names
from modelsmith_runtime.storage import open_artifact, publish
from modelsmith_runtime.task import Task, load_task

log = logging.getLogger(__name__)


def run(task_config: Path) -> Result:
    task = load_task(task_config, DataPipelineSpec)
    spec = task.spec
    if not 0 <= task.worker_index < task.workers:
        raise BadInputError(
            "InvalidEnvironment", f"worker index {task.worker_index} of {task.workers} workers"
        )
    sources = [list_source(i, source) for i, source in enumerate(spec.sources)]
    reference = None
    if spec.filters.perplexity is not None:
        reference = open_artifact(task.input("referenceModel"), "filters.perplexity.referenceModel")
    domain = None
    if spec.filters.domain is not None:
        texts = read_reference(task.input("domainReference"), spec.filters.domain)
        domain = DomainScorer(texts)
        log.info("domain: %d reference documents, %d words", len(texts), len(domain.vocabulary))
    existing = None
    if spec.tokenizer.existing is not None and task.worker_index == 0:
        existing = load_existing(open_artifact(task.input("tokenizer"), "tokenizer.existing"))

    with Telemetry(reports_progress=task.worker_index == 0) as telemetry:
        telemetry.begin(sum(sum(source.sizes) for source in sources))
        if spec.engine is DataEngine.RAY:
            from modelsmith_runtime.data.rayengine import map_on_ray

            part = map_on_ray(spec, sources, telemetry)
            part = drop_perplexity(drop_off_domain(part, spec, domain), spec, reference)
            return _reduce(task, [part], existing, telemetry)
        if task.workers == 1:
            ledger = Stats()
            telemetry.watch(ledger)
            part = process_slice(
                spec,
                sources,
                0,
                1,
                reference,
                domain=domain,
                stats=ledger,
                scanned=telemetry.scanned,
            )
            return _reduce(task, [part], existing, telemetry)
        parts = _map(task, sources, reference, domain, telemetry)
        if isinstance(parts, Result):
            return parts
        try:
            result = _reduce(task, parts, existing, telemetry)
        except BadInputError:
            remove_parts(task.config.output)  # the run has failed for good: no retry needs them
            raise
        remove_parts(task.config.output)
        return result


def _map(
    task: Task[DataPipelineSpec],
    sources: list[SourceFiles],
    reference: Path | None,
    domain: DomainScorer | None,
    telemetry: Telemetry,
) -> list[Part] | Result:
    """This worker's part, published for worker 0; for worker 0, every worker's part.

    Workers other than 0 return their Result: their work ends with the publish.
    """
    run_id = fingerprint(task.config, task.workers, sources)
    uri = part_uri(task.config.output, task.worker_index)
    mine = None
    if is_complete(uri, run_id):
        log.info("worker %d: part %s already complete, reusing it", task.worker_index, uri)
    else:
        ledger = Stats()
        telemetry.watch(ledger)
        mine = process_slice(
            task.spec,
            sources,
            task.worker_index,
            task.workers,
            reference,
            domain=domain,
            stats=ledger,
            scanned=telemetry.scanned,
        )
        save_part(mine, uri, run_id, task.worker_index, task.producer)
    if task.worker_index != 0:
        stats = mine.stats if mine is not None else load_stats(uri)
        return Result(metrics=_counts(stats) | {"worker": float(task.worker_index)})
    uris = wait_for_parts(task.config.output, task.workers, run_id)
    return [mine if i == 0 and mine is not None else load_part(u) for i, u in enumerate(uris)]


def _reduce(
    task: Task[DataPipelineSpec],
    parts: list[Part],
    existing: TokenizerInfo | None,
    telemetry: Telemetry,
) -> Result:
    """Part 0 is this process's own map work (worker 0's slice, or the Ray job's all)."""
    reduced = reduce_parts(parts, task.spec)
    telemetry.watch(parts[0].stats, reduced.dedup)
    telemetry.kept(reduced.documents)
    if reduced.documents == 0:
        raise BadInputError("EmptyCorpus", _empty_message(reduced.stats))
    return _build(task, reduced, existing, telemetry)


def _empty_message(stats: Stats) -> str:
    if stats.read.documents == 0:
        return "the sources hold no documents"
    return f"no documents left: all {stats.read.documents} read were removed ({stats.summary()})"


def _build(
    task: Task[DataPipelineSpec],
    reduced: Reduced,
    existing: TokenizerInfo | None,
    telemetry: Telemetry,
) -> Result:
    spec = task.spec
    texts = reduced.part.texts
    length = spec.packing.sequence_length
    meta = {"kind": "DataPipeline", "format": FORMAT}
    with publish(task.config.output, meta, producer=task.producer) as (staging, published):
        if existing is not None:
            info = existing
            save_existing(info, staging / TOKENIZER)
        else:
            if spec.tokenizer.train is None:  # the spec's own rule: train or existing
                raise BadInputError(
                    "InvalidSpec", "tokenizer: set exactly one of train or existing"
                )
            trained = train(iter(texts), len(texts), spec.tokenizer.train)
            info = save_trained(trained, staging / TOKENIZER, length)
        order = mixture(reduced, spec)
        names = source_names([source.uri for source in spec.sources])
        shard_bytes = spec.packing.shard_size_mb << 20
        writer = ShardWriter(staging, length, info.vocab_size, shard_bytes, sources=names)
        of_source = reduced.part.keys[:, 0]
        packed = pack(
            info,
            (texts[i] for i in order),
            writer,
            telemetry.tokenized,
            sources=(int(of_source[i]) for i in order),
        )
        if packed.tokens - packed.dropped == 0:
            raise BadInputError(
                "EmptyCorpus",
                f"{reduced.documents} documents make {packed.tokens} tokens (mixture included), "
                f"fewer than one sequence of {length}",
            )
        index = writer.close(documents=packed.documents, tokenizer=TOKENIZER)
        report = _report(task, reduced, info=info, packed=packed, index=index, order=order)
        (staging / REPORT).write_text(json.dumps(report, indent=2))
    metrics = _counts(reduced.stats) | {
        "documents_out": float(reduced.documents),
        "documents_packed": float(packed.documents),
        "bytes_out": float(reduced.part.sizes.sum()),
        "duplicate_rate": duplicate_rate(reduced.stats, reduced.documents),
        "exact_duplicates": float(reduced.stats.removed_documents(Reason.EXACT_DUPLICATE)),
        "near_duplicates": float(reduced.stats.removed_documents(Reason.NEAR_DUPLICATE)),
        "tokens": float(index["tokens"]),
        "sequences": float(index["sequences"]),
        "vocab_size": float(info.vocab_size),
    }
    log.info("published %s: %s", published.uri, json.dumps(report["documents"]))
    return Result(
        uri=published.uri,
        digest=published.digest,
        size_bytes=published.size_bytes,
        metrics=metrics,
    )


def _counts(stats: Stats) -> dict[str, float]:
    """Documents and bytes in, and removed per reason: what every worker can report."""
    metrics = {
        "documents_in": float(stats.read.documents),
        "bytes_in": float(stats.read.bytes),
        "invalid_documents": float(stats.removed_documents(Reason.INVALID)),
    }
    for reason, tally in sorted(stats.removed.items()):
        metrics[f"removed_{reason.value}"] = float(tally.documents)
        metrics[f"removed_{reason.value}_bytes"] = float(tally.bytes)
    return metrics


def _near_settings(spec: DataPipelineSpec) -> dict[str, Any]:
    """What decided "near": MinHash's threshold and permutations, or SimHash's distance."""
    dedup = spec.dedup
    if dedup.near is NearDedupMethod.SIMHASH:
        return {"maxHammingDistance": dedup.max_hamming_distance, "fingerprintBits": 64}
    if dedup.near is NearDedupMethod.MINHASH:
        return {"threshold": dedup.jaccard_threshold, "permutations": dedup.num_permutations}
    return {}


def _report(
    task: Task[DataPipelineSpec],
    reduced: Reduced,
    *,
    info: TokenizerInfo,
    packed: Packed,
    index: dict[str, Any],
    order: list[int],
) -> dict[str, Any]:
    spec = task.spec
    stats = reduced.stats
    kept_per_source = np.bincount(reduced.part.keys[:, 0], minlength=len(spec.sources))
    packed_per_source = np.bincount(
        reduced.part.keys[order, 0] if order else np.zeros(0, dtype=np.int64),
        minlength=len(spec.sources),
    )
    exact = stats.removed_documents(Reason.EXACT_DUPLICATE)
    near = stats.removed_documents(Reason.NEAR_DUPLICATE)
    return {
        "documents": {
            "in": stats.read.documents,
            "invalid": stats.removed_documents(Reason.INVALID),
            "out": reduced.documents,
            "packed": packed.documents,
        },
        "bytes": {"in": stats.read.bytes, "out": int(reduced.part.sizes.sum())},
        "removed": stats.to_json()["removed"],
        "dedup": {
            "exact": spec.dedup.exact,
            "near": spec.dedup.near.value,
            "ngram": spec.dedup.ngram,
            **_near_settings(spec),
            "exactDuplicates": exact,
            "nearDuplicates": near,
            "duplicateRate": duplicate_rate(stats, reduced.documents),
        },
        "sources": [
            {
                "name": index["sources"][i],
                "sequences": index["sourceSequences"][i],
                "uri": source.uri,
                "format": source.format.value,
                "weight": source.weight,
                "documentsIn": stats.sources_in.get(i, 0),
                "documentsOut": int(kept_per_source[i]),
                "documentsPacked": int(packed_per_source[i]),
            }
            for i, source in enumerate(spec.sources)
        ],
        "tokenizer": {
            "trained": info.trained,
            "vocabSize": info.vocab_size,
            "requestedVocabSize": spec.tokenizer.train.vocab_size if spec.tokenizer.train else None,
            "eosToken": info.eos_token,
        },
        "tokens": packed.tokens,
        "tokensPacked": int(index["tokens"]),
        "tokensDropped": packed.dropped,
        "sequences": int(index["sequences"]),
        "sequenceLength": spec.packing.sequence_length,
        "shards": len(index["shards"]),
        "workers": task.workers,
        "engine": spec.engine.value,
    }
