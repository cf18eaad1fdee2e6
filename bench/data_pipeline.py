"""DataPipeline throughput and near-dedup quality, against baselines, in one run.

On one generated corpus with planted duplicates (tests/workloads/corpus.py), prints:

- our MinHash dedup alone (rensa's Rust R-MinHash signatures + datasketch's LSH +
  union-find); the same with datasketch's own signatures, what the pipeline used
  before rensa, as the baseline of the speed ratio; our SimHash dedup (numpy
  fingerprints, block search, the same clusters) at the default 3 bits and at 10,
  with the ``simhash`` package's fingerprints timed beside ours: each with precision,
  recall and its speed ratio to MinHash measured in this run; and datatrove's
  four-stage MinHash dedup (signatures, buckets, cluster, filter) with the same word
  5-grams and the same banding: documents/s and MB/s per core, precision and recall
  of removing the planted near duplicates, and the ratio of the two speeds;
- the whole ``modelsmith-runtime data`` process (read, normalize, filters, exact and
  near dedup, BPE training, tokenization, packing, publish) on one core;
- with ``--engine ray``, the same process with ``engine: ray`` on a local Ray instance
  over every core of the machine, next to the indexed run: wall-clock docs/s, per core
  used, and the speed-up. Its wall time includes starting Ray and its workers.

Everything runs on one core (one process, OMP and tokenizers threads off), so the
figures are per core. datatrove is not a dependency: without it, our figures are
still printed.

    .venv/bin/pip install datatrove xxhash simhash   # the baselines, optional
    .venv/bin/python bench/data_pipeline.py [--originals 10000] [--engine ray]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAYON_NUM_THREADS", "1")  # rensa's batch API: one core, like the rest

from tests.workloads.corpus import JUNK, Corpus, generate, write_jsonl  # noqa: E402

from modelsmith.api.datapipeline import Normalize  # noqa: E402
from modelsmith.contract import TASK_API_VERSION  # noqa: E402
from modelsmith_runtime.data import simhash  # noqa: E402
from modelsmith_runtime.data.dedup import (  # noqa: E402
    LSH_WEIGHTS,
    SEED,
    near_duplicates,
    shingles,
    signatures,
)
from modelsmith_runtime.data.normalize import normalize  # noqa: E402

THRESHOLD = 0.8
PERMUTATIONS = 128
NGRAM = 5


def _line(name: str, docs: int, megabytes: float, cpu: float, scores: tuple[float, float]) -> None:
    precision, recall = scores
    print(
        f"{name:<34} {docs / cpu:>9.0f} docs/s/core {megabytes / cpu:>7.2f} MB/s/core "
        f"precision {precision:.3f} recall {recall:.3f}  ({cpu:.1f} CPU s)"
    )


def ours(corpus: Corpus, texts: list[str]) -> tuple[float, tuple[float, float]]:
    import datasketch  # noqa: F401 - its import (scipy) is not dedup time

    start = time.process_time()
    sigs = signatures(texts, len(texts), PERMUTATIONS, NGRAM)
    duplicate = near_duplicates(sigs, THRESHOLD)
    cpu = time.process_time() - start
    kept = {text for text, dup in zip(texts, duplicate, strict=True) if not dup}
    return cpu, corpus.scores(kept)


def datasketch_minhash(corpus: Corpus, texts: list[str]) -> tuple[float, tuple[float, float]]:
    """datasketch's signatures (crc32 shingle hashes, affine32 scheme), through the same
    LSH, confirmation and clusters: the pipeline's MinHash before rensa."""
    from datasketch import MinHash

    start = time.process_time()
    sigs = np.empty((len(texts), PERMUTATIONS), dtype=np.uint32)
    sets = (shingles(text, NGRAM) for text in texts)
    for row, minhash in enumerate(
        MinHash.generator(
            sets, num_perm=PERMUTATIONS, seed=SEED, scheme="affine32", hashfunc=zlib.crc32
        )
    ):
        sigs[row] = minhash.hashvalues
    duplicate = near_duplicates(sigs, THRESHOLD)
    cpu = time.process_time() - start
    kept = {text for text, dup in zip(texts, duplicate, strict=True) if not dup}
    return cpu, corpus.scores(kept)


def ours_simhash(
    corpus: Corpus, texts: list[str], distance: int
) -> tuple[float, tuple[float, float]]:
    start = time.process_time()
    sigs = simhash.fingerprints(texts, len(texts), NGRAM)
    duplicate = simhash.near_duplicates(sigs, distance)
    cpu = time.process_time() - start
    kept = {text for text, dup in zip(texts, duplicate, strict=True) if not dup}
    return cpu, corpus.scores(kept)


def fingerprint_speeds(texts: list[str]) -> tuple[float, float | None]:
    """CPU seconds for the fingerprints alone: ours, and the ``simhash`` package's."""
    start = time.process_time()
    simhash.fingerprints(texts, len(texts), NGRAM)
    mine = time.process_time() - start
    try:
        from simhash import Simhash
    except ImportError:
        return mine, None
    start = time.process_time()
    for text in texts:
        Simhash([gram.decode() for gram in shingles(text, NGRAM)])
    return mine, time.process_time() - start


def datatrove(corpus: Corpus, texts: list[str]) -> tuple[float, tuple[float, float]] | None:
    try:
        from datatrove.data import Document
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.dedup.minhash import (
            MinhashConfig,
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.word_tokenizers import WordTokenizer
        from loguru import logger
    except ImportError as exc:
        print(f"datatrove baseline skipped: {exc} (pip install datatrove xxhash)")
        return None

    class Words(WordTokenizer):  # type: ignore[misc]
        """datatrove already lowercases and strips punctuation; NLTK would need a download."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    logger.remove()
    try:
        import xxhash  # noqa: F401

        hash_config = HashConfig()  # datatrove's default: xxhash, 64 bits
    except ImportError:
        hash_config = HashConfig(hash_fc="sha1", precision=32)
    # Our banding at this threshold (MinHashLSH with LSH_WEIGHTS): the same for both.
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS, weights=LSH_WEIGHTS)
    config = MinhashConfig(
        n_grams=NGRAM, num_buckets=lsh.b, hashes_per_bucket=lsh.r, hash_config=hash_config
    )
    print(f"datatrove config: {config} ({lsh.b} bands x {lsh.r} rows, {hash_config.hash_fc})")
    docs = [Document(text=text, id=str(i)) for i, text in enumerate(texts)]
    kept: list[str] = []

    def collect(data: Any, rank: int = 0, world_size: int = 1) -> Any:
        for doc in data:
            kept.append(doc.text)
            yield doc

    with tempfile.TemporaryDirectory() as tmp:
        sigs, buckets, remove = (f"{tmp}/{name}" for name in ("sigs", "buckets", "remove"))
        stages: list[tuple[list[Any], int]] = [
            ([docs, MinhashDedupSignature(sigs, config=config, language=Words())], 1),
            ([MinhashDedupBuckets(sigs, buckets, config=config)], config.num_buckets),
            ([MinhashDedupCluster(buckets, remove, config=config)], 1),
            ([docs, MinhashDedupFilter(remove), collect], 1),
        ]
        start = time.process_time()
        with Path(os.devnull).open("w") as quiet, contextlib.redirect_stderr(quiet):
            for n, (pipeline, tasks) in enumerate(stages):
                LocalPipelineExecutor(
                    pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{tmp}/logs{n}"
                ).run()
        cpu = time.process_time() - start
    return cpu, corpus.scores(set(kept))


def pipeline(corpus: Corpus, engine: str = "indexed") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_jsonl(corpus.texts, work / "raw" / "corpus.jsonl")
        out = work / "dataset"
        config = {
            "apiVersion": TASK_API_VERSION,
            "kind": "DataPipeline",
            "name": "bench",
            "inputs": {},
            "output": str(out),
            "spec": {
                "output": {"uri": str(out)},
                "sources": [{"uri": str(work / "raw"), "format": "jsonl"}],
                "dedup": {"threshold": THRESHOLD, "permutations": PERMUTATIONS, "ngram": NGRAM},
                "tokenizer": {"train": {"vocabSize": 8192}},
                "packing": {"sequenceLength": 1024},
                "engine": engine,
            },
        }
        (work / "task.json").write_text(json.dumps(config))
        env = {
            **os.environ,
            "MODELSMITH_TERMINATION_LOG": str(work / "result.json"),
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
            "RAY_ADDRESS": "local",  # a Ray instance of its own, never one found running
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "modelsmith_runtime.cli",
                "data",
                f"--task-config={work / 'task.json'}",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result: dict[str, Any] = json.loads((work / "result.json").read_text())
        return {"wall": wall, "cpu": cpu, **result["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=10000)
    parser.add_argument(
        "--engine",
        choices=["indexed", "ray"],
        default="indexed",
        help="ray: also run the pipeline on Ray Data and compare it with the indexed run",
    )
    args = parser.parse_args()
    n = args.originals
    corpus = generate(
        originals=n, exact=n // 10, near=n // 5, related=n // 20, junk_each=max(1, n // 200)
    )
    spec = Normalize()
    texts = [normalize(d.text, spec) for d in corpus.docs if d.kind not in JUNK]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(
        f"corpus: {len(corpus.docs)} documents, {len(texts)} reach dedup ({megabytes:.1f} MB); "
        f"planted: {dict(corpus.counts)}"
    )
    print(f"MinHash: threshold {THRESHOLD}, {PERMUTATIONS} permutations, word {NGRAM}-grams")

    base_cpu, base_scores = datasketch_minhash(corpus, texts)
    _line("MinHash, datasketch signatures", len(texts), megabytes, base_cpu, base_scores)
    our_cpu, our_scores = ours(corpus, texts)
    _line("modelsmith MinHash dedup (rensa)", len(texts), megabytes, our_cpu, our_scores)
    print(f"speed ratio rensa / datasketch signatures: {base_cpu / our_cpu:.2f}x")
    for distance in (3, 10):
        cpu, scores = ours_simhash(corpus, texts, distance)
        _line(f"modelsmith SimHash dedup, k={distance}", len(texts), megabytes, cpu, scores)
        print(f"speed ratio SimHash k={distance} / MinHash: {our_cpu / cpu:.2f}x")
    mine, library = fingerprint_speeds(texts)
    if library is not None:
        print(
            f"SimHash fingerprints: ours {len(texts) / mine:.0f} docs/s/core, the simhash "
            f"package {len(texts) / library:.0f}: ratio {library / mine:.2f}x"
        )
    baseline = datatrove(corpus, texts)
    if baseline is not None:
        dt_cpu, dt_scores = baseline
        _line("datatrove MinHash dedup (4 stages)", len(texts), megabytes, dt_cpu, dt_scores)
        print(f"speed ratio modelsmith / datatrove: {dt_cpu / our_cpu:.2f}x")

    run = pipeline(corpus)
    raw_mb = run["bytes_in"] / 1e6
    print(
        f"{'modelsmith full pipeline (process)':<34} {run['documents_in'] / run['cpu']:>9.0f} "
        f"docs/s/core {raw_mb / run['cpu']:>7.2f} MB/s/core  ({run['cpu']:.1f} CPU s, "
        f"{run['wall']:.1f} s wall; {run['documents_out']:.0f} kept, "
        f"{run['tokens']:.0f} tokens, duplicate rate {run['duplicate_rate']:.3f})"
    )
    if args.engine == "ray":
        compare_ray(corpus, run)


def compare_ray(corpus: Corpus, indexed: dict[str, Any]) -> None:
    """Wall-clock throughput: Ray's CPU time is spent in worker processes this process
    does not wait for, so per core means per core the engine had."""
    cores = len(os.sched_getaffinity(0))
    ray = pipeline(corpus, engine="ray")
    for name, run, used in (("indexed", indexed, 1), ("ray", ray, cores)):
        rate = run["documents_in"] / run["wall"]
        print(
            f"{'engine ' + name + ' (wall)':<34} {rate:>9.0f} docs/s {rate / used:>9.0f} "
            f"docs/s/core  ({used} core(s), {run['wall']:.1f} s wall)"
        )
    same = all(indexed[k] == ray[k] for k in ("documents_out", "tokens", "duplicate_rate"))
    print(
        f"speed-up ray / indexed: {indexed['wall'] / ray['wall']:.2f}x on {cores} cores; "
        f"same documents and tokens: {same}"
    )


if __name__ == "__main__":
    main()
