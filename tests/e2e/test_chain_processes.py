"""The whole chain as the images would run it: data -> pretrain -> finetune -> quantize.

Every stage is a real `modelsmith-runtime` process reading the previous stage's
published artifact, exactly the URIs the operator would put in each task config after
resolving `fromRef`. Tiny sizes: the point is that the artifacts fit together.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelsmith.contract import COMPLETION_MARKER
from modelsmith_runtime.storage import artifact_digest
from tests.workloads.conftest import Run, run_component, task_config
from tests.workloads.corpus import write_jsonl
from tests.workloads.tiny_dataset import documents, pretrain_config
from tests.workloads.tiny_model import (
    LORA,
    finetune_config,
    instruction_records,
    quantize_config,
)
from tests.workloads.tiny_model import write_jsonl as write_records


def _published(run: Run, output: Path) -> None:
    assert run.returncode == 0, run.output
    assert run.result is not None and run.result.error is None
    assert run.result.uri == str(output)
    assert (output / COMPLETION_MARKER).is_file()
    assert run.result.digest == artifact_digest(output)


def test_raw_text_becomes_a_quantized_fine_tuned_model(tmp_path: Path) -> None:
    texts = list(documents(600, seed=3))
    raw = write_jsonl(texts + texts[:50], tmp_path / "raw" / "corpus.jsonl")  # 50 exact dups

    dataset = tmp_path / "dataset"
    data_spec = {
        "output": {"uri": str(dataset)},
        "sources": [{"uri": str(raw), "format": "jsonl"}],
        "filters": {"length": {"minChars": 20}},
        "tokenizer": {"train": {"vocabSize": 400, "minFrequency": 2}},
        "packing": {"sequenceLength": 64, "shardSizeMb": 1},
    }
    data = run_component(
        "data", task_config("DataPipeline", data_spec, str(dataset)), tmp_path / "w-data"
    )
    _published(data, dataset)
    assert data.result is not None and data.result.metrics["documents_out"] <= 600

    base = tmp_path / "base"
    pretrain = run_component(
        "pretrain",
        pretrain_config(str(dataset), str(base), training={"steps": 20}),
        tmp_path / "w-pretrain",
    )
    _published(pretrain, base)
    index = json.loads((dataset / "index.json").read_text())
    assert json.loads((base / "config.json").read_text())["vocab_size"] == index["vocabSize"]
    assert (base / "tokenizer.json").read_bytes() == (
        dataset / "tokenizer" / "tokenizer.json"
    ).read_bytes(), "the model carries the tokenizer its data was cut with"

    chat = tmp_path / "sft.jsonl"
    write_records(chat, instruction_records(48))
    tuned = tmp_path / "tuned"
    finetune = run_component(
        "finetune",
        finetune_config(str(base), str(chat), str(tuned), lora=LORA, mergeAdapter=True),
        tmp_path / "w-finetune",
    )
    _published(finetune, tuned)

    quantized = tmp_path / "quantized"
    quantize = run_component(
        "quantize",
        quantize_config(
            str(tuned),
            str(quantized),
            "dynamic-int8",
            qualityGate={"maxPerplexityIncreasePercent": 50},
        ),
        tmp_path / "w-quantize",
    )
    _published(quantize, quantized)
    assert quantize.result is not None
    assert "perplexity_increase_percent" in quantize.result.metrics
