"""The DataPipeline workload: raw text in, cleaned, deduplicated, tokenized shards out.

The stages follow datatrove's (read, normalize, Gopher-style filters, MinHash dedup with
a cross-shard reduce, tokenize, pack) so its users find what they know; SimHash
(`simhash`) is the other near-dedup method, and `quality` adds the entropy and
domain-similarity scores. The work splits
in a map half (read, normalize, filter, sign: one document at a time) and a reduce
half (dedup, tokenizer, packing: every document at once, in one process). Two engines
run the map half: ``indexed``, one process per worker pod over its slice
(`pipeline.process_slice`, handed over through `parts`), and ``ray``, a Ray Data job
over the pods' Ray cluster (`rayengine`). Both feed the same reduce
(`pipeline.reduce_parts`) and so publish the same dataset; `telemetry` serves the
counts to Prometheus and the progress to the operator for both.
"""
