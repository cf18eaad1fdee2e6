"""Invalid manifests are refused by the real API server, with a message naming the field.

Each case starts from a valid sample (samples/), breaks one thing, and applies it with
kubectl as a user would. The valid samples themselves must be accepted, so a case can
only pass because of the one thing it broke.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from modelsmith.api import KINDS
from modelsmith.devcluster.cluster import DevCluster
from tests.helpers import SAMPLES, kubectl_apply, sample_manifests

pytestmark = pytest.mark.integration

VALID = sample_manifests()


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy with ``path`` (dotted, from spec) set; value None deletes the key."""
    out = copy.deepcopy(doc)
    node = out["spec"]
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return out


# (kind, spec path, new value, what the error must say)
CASES: list[tuple[str, str, Any, str]] = [
    # wrong types
    ("DataPipeline", "workers", "two", 'spec.workers: Invalid value: "string"'),
    ("PretrainJob", "training.learningRate", "fast", "spec.training.learningRate"),
    ("FineTune", "mergeAdapter", "yes", "spec.mergeAdapter"),
    ("InferenceService", "replicas", [1], "spec.replicas"),
    # bounds and patterns
    ("DataPipeline", "workers", 0, "spec.workers: Invalid value: 0"),
    ("DataPipeline", "sources", [], "spec.sources: Invalid value"),
    ("DataPipeline", "output.uri", "ftp://x/y", "spec.output.uri"),
    # the storage URI grammar (KServe's): what is wrong and where
    ("DataPipeline", "output.uri", "http://host/x", "spec.output.uri: Invalid value"),
    ("FineTune", "output.uri", "hf://org/model", "must be pvc://CLAIM/path, s3://BUCKET/prefix"),
    ("FineTune", "output.uri", "pvc://Data/x", "lower-case claim names"),
    ("FineTune", "output.uri", "pvc://data/../other", "must not contain a '..' segment"),
    ("FineTune", "output.uri", "pvc://data", "needs a path below the claim or bucket"),
    ("FineTune", "output.uri", "s3://bucket", "needs a path below the claim or bucket"),
    ("FineTune", "output.uri", "s3://ab/x", "buckets of 3 to 63"),
    ("PretrainJob", "dataset", {"uri": "gcs://bucket/x"}, "spec.dataset.uri"),
    ("QuantizeJob", "model", {"uri": "relative/model"}, "spec.model.uri"),
    ("InferenceService", "model", {"uri": "https://example.com/m"}, "spec.model.uri"),
    (
        "DataPipeline",
        "sources",
        [{"uri": "s3:/bucket/raw", "format": "text"}],
        "spec.sources[0].uri",
    ),
    ("DataPipeline", "storage.secretRef", {"name": "Bad_Name"}, "spec.storage.secretRef.name"),
    ("DataPipeline", "storage.scratchSize", "big", "spec.storage.scratchSize"),
    ("DataPipeline", "dedup.threshold", 1.5, "spec.dedup.threshold"),
    ("PretrainJob", "resources.gpus", 17, "spec.resources.gpus"),
    ("PretrainJob", "resources.memory", "lots", "spec.resources.memory"),
    ("InferenceService", "canary.steps", [5, 150], "spec.canary.steps[1]"),
    ("InferenceService", "canary.interval", "soon", "spec.canary.interval"),
    ("InferenceService", "canary.interval", "0s", "spec.canary.interval: Invalid value"),
    ("InferenceService", "canary.analysisInterval", "0m0s", "must be longer than 0s"),
    # bad enums
    ("DataPipeline", "sources", [{"uri": "/x", "format": "csv"}], "spec.sources[0].format"),
    ("PretrainJob", "distribution.strategy", "horovod", "spec.distribution.strategy"),
    ("FineTune", "method", "prefix-tuning", "spec.method"),
    ("QuantizeJob", "method", "int3", "spec.method"),
    ("QuantizeJob", "groupSize", 100, "spec.groupSize"),
    ("InferenceService", "runtime", "triton", "spec.runtime"),
    # cross-field CEL rules
    ("PretrainJob", "architecture.type", "moe", "experts is required for moe"),
    ("PretrainJob", "architecture.heads", 7, "hiddenSize must divide by heads"),
    ("PretrainJob", "architecture.kvHeads", 3, "kvHeads must divide heads"),
    ("PretrainJob", "training.tokens", 1000000, "set exactly one of steps or tokens"),
    ("PretrainJob", "training.steps", None, "set exactly one of steps or tokens"),
    (
        "PretrainJob",
        "training.globalBatchSize",
        48,
        "multiple of microBatchSize * distribution.nodes * resources.gpus",
    ),
    ("PretrainJob", "distribution.zeroStage", 2, "zeroStage applies to strategy deepspeed"),
    ("FineTune", "method", "full", "lora settings need method lora or qlora"),
    ("QuantizeJob", "method", "int8-weight-only", "groupSize applies to int4-weight-only"),
    ("QuantizeJob", "method", "gptq", "method gptq needs calibration"),
    (
        "DataPipeline",
        "tokenizer",
        {"train": {"vocabSize": 1000}, "existing": {"uri": "/t"}},
        "exactly one of train or existing",
    ),
    (
        "FineTune",
        "baseModel",
        {"uri": "/m", "fromRef": {"kind": "PretrainJob", "name": "p"}},
        "set exactly one of uri or fromRef",
    ),
    ("FineTune", "dataset", {}, "set exactly one of uri or fromRef"),
    ("InferenceService", "canary.stepWeight", 10, "set steps or stepWeight, not both"),
    ("InferenceService", "canary.steps", [50, 25], "canary.steps must be ascending"),
    (
        "InferenceService",
        "autoscaling",
        {"minReplicas": 5, "maxReplicas": 2},
        "minReplicas must not exceed maxReplicas",
    ),
    ("InferenceService", "traffic", {"backend": "gateway-api"}, "gatewayRef is required"),
    (
        "InferenceService",
        "canary.analysisInterval",
        "5m",
        "analysisInterval must not exceed interval",
    ),
    (
        "InferenceService",
        "traffic",
        {"backend": "gateway-api", "gatewayRef": {"name": "gw"}},
        "builtin checks read the built-in router's metrics",
    ),
    (
        "InferenceService",
        "canary.metrics",
        [{"name": "p99", "query": "up"}],
        "needs min, max or both",
    ),
    (
        "InferenceService",
        "canary.metrics",
        [{"name": "e", "query": "up", "builtin": "error-rate", "max": 1}],
        "needs query or builtin, not both",
    ),
    (
        "InferenceService",
        "canary.metrics",
        [{"name": "e", "max": 1}],
        "needs query or builtin, not both",
    ),
    (
        "InferenceService",
        "canary.metrics",
        [{"name": "e", "builtin": "p50", "max": 1}],
        "spec.canary.metrics[0].builtin",
    ),
    # v1alpha1's clean break: GPUs per pod are resources.gpus, in every kind
    (
        "PretrainJob",
        "distribution.gpusPerNode",
        8,
        'unknown field "spec.distribution.gpusPerNode"',
    ),
    # spec.version: Semantic Versioning 2.0.0 on every model-producing kind
    ("PretrainJob", "version", "1.2", "spec.version: Invalid value"),
    ("FineTune", "version", "v1.2.3", "spec.version: Invalid value"),
    ("QuantizeJob", "version", "1.2.3-0123", "spec.version: Invalid value"),
    ("QuantizeJob", "version", "1.2.3+", "spec.version: Invalid value"),
    # rules that had no apply-time case, so nothing checked their CEL and Python forms agree
    ("PretrainJob", "training.microBatchSize", 5, "training.globalBatchSize must be a multiple"),
    ("FineTune", "hyperparameters.microBatchSize", 3, "batchSize must be a multiple of micro"),
    (
        "PretrainJob",
        "architecture.auxLossCoef",
        0.01,
        "architecture: experts, topK, capacityFactor, auxLossCoef are moe only",
    ),
    ("InferenceService", "canary.steps", [5, 25, 90], "canary.steps must not exceed maxWeight"),
    (
        "InferenceService",
        "canary.metrics",
        [{"name": "e", "builtin": "error-rate", "min": 0.5, "max": 0.1}],
        "metric min exceeds max",
    ),
    (
        "DataPipeline",
        "filters.length",
        {"minChars": 500, "maxChars": 100},
        "filters.length.minChars must be below maxChars",
    ),
    # dangling and malformed references
    (
        "PretrainJob",
        "dataset.fromRef",
        {"kind": "Secret", "name": "x"},
        "spec.dataset.fromRef.kind",
    ),
    (
        "FineTune",
        "baseModel.fromRef",
        {"kind": "PretrainJob", "name": "Not_A_Name"},
        "spec.baseModel.fromRef.name",
    ),
    # loss-driven data mixture: the clip bounds must leave room to move
    (
        "PretrainJob",
        "mixture",
        {"strategy": "loss-driven", "minWeight": 2.0, "maxWeight": 1.0},
        "mixture.minWeight must be below mixture.maxWeight",
    ),
    # loss-driven data mixture: maxWeight's default (2.0) applies before the rule
    (
        "PretrainJob",
        "mixture",
        {"minWeight": 3.0},
        "mixture.minWeight must be below mixture.maxWeight",
    ),
    ("PretrainJob", "mixture.strategy", "greedy", "spec.mixture.strategy"),
    # incremental pretraining: frozen random weights would stay random
    ("PretrainJob", "freeze", {"layers": 1}, "freeze needs initFrom"),
    # DataPipeline SimHash near dedup: each method takes only its own settings
    (
        "DataPipeline",
        "dedup",
        {"near": "simhash", "permutations": 128},
        "dedup.permutations are MinHash's: near simhash has none to set",
    ),
    (
        "DataPipeline",
        "dedup",
        {"near": "simhash", "threshold": 0.9},
        "dedup.threshold is MinHash's Jaccard similarity: near simhash takes",
    ),
    (
        "DataPipeline",
        "dedup",
        {"near": "minhash", "simhash": {"maxHammingDistance": 3}},
        "dedup.simhash applies to near simhash only",
    ),
    (
        "DataPipeline",
        "dedup",
        {"near": "simhash", "simhash": {"maxHammingDistance": 13}},
        "spec.dedup.simhash.maxHammingDistance",
    ),
    # DataPipeline quality scores: an entropy band that keeps nothing, a domain without data
    (
        "DataPipeline",
        "filters.entropy",
        {"minBits": 4.5, "maxBits": 4.0},
        "filters.entropy.minBits must be below filters.entropy.maxBits",
    ),
    (
        "DataPipeline",
        "filters.domain",
        {"minSimilarity": 0.1},
        "spec.filters.domain.reference: Required value",
    ),
    (
        "DataPipeline",
        "filters.domain",
        {"reference": {"uri": "/ref.jsonl"}, "minSimilarity": 1.5},
        "spec.filters.domain.minSimilarity",
    ),
    # QuantizeJob ONNX export: an opset onnxruntime was not checked with, an unknown format
    ("QuantizeJob", "export", {"format": "onnx", "opset": 17}, "spec.export.opset"),
    ("QuantizeJob", "export", {"format": "openvino"}, "spec.export.format"),
]


@pytest.mark.parametrize(
    ("kind", "path", "value", "message"),
    CASES,
    ids=[f"{k}-{p}-{i}" for i, (k, p, _v, _m) in enumerate(CASES)],
)
def test_invalid_manifest_is_rejected(
    dev_cluster: DevCluster,
    crds: list[str],
    namespace: str,
    *,
    kind: str,
    path: str,
    value: Any,
    message: str,
) -> None:
    proc = kubectl_apply(dev_cluster, namespace, _set(VALID[kind], path, value))
    assert proc.returncode != 0, f"accepted: {kind} with {path}={value!r}"
    assert message in proc.stderr, proc.stderr


# (kind, {spec path: new value}, what the error must say): rules across fields
COMBINED: list[tuple[str, dict[str, Any], str]] = [
    (
        "QuantizeJob",
        {"method": "fp8", "groupSize": None, "resources.gpus": 0},
        "method fp8 needs resources.gpus of 1 or more",
    ),
    (
        "PretrainJob",
        {"resources.gpus": 3},
        "globalBatchSize must be a multiple of microBatchSize * distribution.nodes * "
        "resources.gpus",
    ),
]


# (the same, for rules that need two fields changed)
COMBINED += [
    (
        "PretrainJob",
        {"distribution.strategy": "ddp", "distribution.offload": "cpu"},
        "distribution.offload needs strategy fsdp or deepspeed",
    ),
    (
        "InferenceService",
        {"canary.steps": None, "canary.stepWeight": 60},
        "canary.stepWeight must not exceed maxWeight",
    ),
    (
        "PretrainJob",
        {"architecture.type": "moe", "architecture.experts": 4, "architecture.topK": 8},
        "architecture.topK must not exceed experts",
    ),
    # incremental pretraining: at least one decoder layer of the initFrom model trains
    (
        "PretrainJob",
        {
            "initFrom": {"fromRef": {"kind": "PretrainJob", "name": "base"}},
            "freeze": {"layers": 4},
        },
        "freeze.layers must be below architecture.layers",
    ),
    # FineTune methods (prefix, adapter, distill, freeze): settings only with their method
    ("FineTune", {"method": "prefix", "lora": None}, "mergeAdapter needs method lora or qlora"),
    (
        "FineTune",
        {"method": "adapter", "lora": None, "mergeAdapter": None, "prefix": {}},
        "prefix settings need method prefix",
    ),
    ("FineTune", {"adapter": {"reductionFactor": 8}}, "adapter settings need method adapter"),
    (
        "FineTune",
        {
            "method": "adapter",
            "lora": None,
            "mergeAdapter": None,
            "adapter": {"bottleneckSize": 8, "reductionFactor": 8},
        },
        "set adapter.reductionFactor or adapter.bottleneckSize, not both",
    ),
    (
        "FineTune",
        {
            "method": "prefix",
            "lora": None,
            "mergeAdapter": None,
            "prefix": {"projectionHiddenSize": 64},
        },
        "prefix.projectionHiddenSize needs prefix.projection: true",
    ),
    (
        "FineTune",
        {"method": "distill", "lora": None, "mergeAdapter": None},
        "method distill needs distill.teacher",
    ),
    ("FineTune", {"distill": {"teacher": {"uri": "/t"}}}, "distill settings need method distill"),
    (
        "FineTune",
        {
            "method": "full",
            "lora": None,
            "mergeAdapter": None,
            "distill": {"teacher": {"uri": "/t"}},
        },
        "distill settings need method distill",
    ),
    ("FineTune", {"freeze": {"layers": 1}}, "freeze needs method full or distill"),
    (
        "FineTune",
        {"method": "full", "lora": None, "mergeAdapter": None, "freeze": {}},
        "freeze needs layers or modules",
    ),
    # QuantizeJob ONNX export: a method whose export is not faithful, TensorRT without a GPU
    (
        "QuantizeJob",
        {"method": "dynamic-int8", "groupSize": None, "export": {"format": "onnx"}},
        "export supports methods int8-weight-only, int4-weight-only and gptq",
    ),
    (
        "QuantizeJob",
        {"export": {"format": "tensorrt"}, "resources.gpus": 0},
        "export.format tensorrt needs resources.gpus of 1 or more",
    ),
]


@pytest.mark.parametrize(("kind", "changes", "message"), COMBINED)
def test_invalid_combination_is_rejected(
    dev_cluster: DevCluster,
    crds: list[str],
    namespace: str,
    *,
    kind: str,
    changes: dict[str, Any],
    message: str,
) -> None:
    doc = VALID[kind]
    for path, value in changes.items():
        doc = _set(doc, path, value)
    proc = kubectl_apply(dev_cluster, namespace, doc)
    assert proc.returncode != 0, f"accepted: {kind} with {changes}"
    assert message in proc.stderr, proc.stderr
    if "resources.gpus" in changes:
        fine = _set(doc, "resources.gpus", 1)
        assert kubectl_apply(dev_cluster, namespace, fine).returncode == 0, (
            "only the GPUs were wrong"
        )


LONGEST = {info.kind: info.max_name_length for info in KINDS}
# (kind, metadata.name, what the error must say)
NAMES = [
    ("DataPipeline", "a" * (LONGEST["DataPipeline"] + 1), "at most 54 characters"),
    ("PretrainJob", "a" * (LONGEST["PretrainJob"] + 1), "NAME-run-1023"),
    ("FineTune", "a" * (LONGEST["FineTune"] + 1), "at most 57 characters"),
    ("InferenceService", "a" * (LONGEST["InferenceService"] + 1), "at most 52 characters"),
    ("QuantizeJob", "7b-chat-int8", "must be a DNS-1035 label"),
    ("InferenceService", "chat.v2", "must be a DNS-1035 label"),
]


@pytest.mark.parametrize(
    ("kind", "name", "message"), NAMES, ids=[f"{k}-{n[:9]}" for k, n, _ in NAMES]
)
def test_a_name_its_children_could_not_have_is_rejected(
    dev_cluster: DevCluster, crds: list[str], namespace: str, *, kind: str, name: str, message: str
) -> None:
    doc = copy.deepcopy(VALID[kind])
    doc["metadata"]["name"] = name
    proc = kubectl_apply(dev_cluster, namespace, doc)
    assert proc.returncode != 0, f"accepted: {kind} named {name!r}"
    assert message in proc.stderr, proc.stderr
    doc["metadata"]["name"] = "a" * LONGEST[kind]  # the longest that fits is accepted
    assert kubectl_apply(dev_cluster, namespace, doc).returncode == 0


@pytest.mark.parametrize("kind", sorted(VALID))
def test_samples_are_accepted(
    dev_cluster: DevCluster, crds: list[str], namespace: str, kind: str
) -> None:
    proc = kubectl_apply(dev_cluster, namespace, VALID[kind])
    assert proc.returncode == 0, proc.stderr


LOCAL = [
    (f"{path.name}:{d['kind']}", d)
    for path in sorted((SAMPLES / "local").glob("*.yaml"))
    for d in yaml.safe_load_all(path.read_text())
    if d
]


@pytest.mark.parametrize("doc", [d for _, d in LOCAL], ids=[i for i, _ in LOCAL])
def test_local_samples_are_accepted(
    dev_cluster: DevCluster, crds: list[str], namespace: str, doc: dict[str, Any]
) -> None:
    """The real node's chain, written as a user would (no GPU, its taint tolerated)."""
    proc = kubectl_apply(dev_cluster, namespace, doc)
    assert proc.returncode == 0, proc.stderr


IMMUTABLE = [
    ("PretrainJob", "architecture.layers", 8, "architecture is immutable"),
    ("PretrainJob", "output.uri", "/elsewhere", "output is immutable"),
    ("FineTune", "output.uri", "/elsewhere", "output is immutable"),
    ("QuantizeJob", "output.uri", "/elsewhere", "output is immutable"),
]


@pytest.mark.parametrize(("kind", "path", "value", "message"), IMMUTABLE)
def test_immutable_fields_cannot_change(
    dev_cluster: DevCluster,
    crds: list[str],
    namespace: str,
    *,
    kind: str,
    path: str,
    value: Any,
    message: str,
) -> None:
    assert kubectl_apply(dev_cluster, namespace, VALID[kind]).returncode == 0
    proc = kubectl_apply(dev_cluster, namespace, _set(VALID[kind], path, value))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
