"""The DataPipeline workload: raw text in, cleaned, deduplicated, tokenized shards out.

The stages follow datatrove's (read, normalize, Gopher-style filters, MinHash dedup with
a cross-shard reduce, tokenize, pack) so its users find what they know, but the whole
run is one process per worker: the map half (`pipeline.process_slice`) runs on every
worker over its share of the documents, the reduce half (`pipeline.reduce_parts`)
runs once, on worker 0, over every worker's part (see `parts`).
"""
