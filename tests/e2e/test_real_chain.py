"""samples/local/chain.yaml in real pods on the real node: raw text to a quantized model.

The operator (a process, node paths refused) resolves each stage's fromRef from the
previous stage's status, so the four resources are applied at once, as a user would.
Every pod pulls its image from the dev registry, reads the object store through its
Service name, and writes to the claim the provisioner made; the outcomes asserted are
the artifacts themselves and the metrics the pods reported in their termination
messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from modelsmith.contract import COMPLETION_MARKER
from modelsmith.devcluster import samplecorpus
from modelsmith.devcluster.cluster import DevCluster
from tests.helpers import wait_for
from tests.integration.claims import sample_claim
from tests.integration.operator_process import OperatorProcess, operator_process
from tests.workloads.s3 import S3

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "local" / "chain.yaml"
GROUP = ("modelsmith.io", "v1alpha1")
PLURALS = {
    "DataPipeline": "datapipelines",
    "PretrainJob": "pretrainjobs",
    "FineTune": "finetunes",
    "QuantizeJob": "quantizejobs",
}
IMAGE_OF = {
    "DataPipeline": "data",
    "PretrainJob": "trainer",
    "FineTune": "trainer",
    "QuantizeJob": "quantizer",
}


@pytest.fixture
def chain_operator(
    dev_cluster: DevCluster, crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    env = {"MODELSMITH_ALLOW_NODE_PATHS": "false"}
    args = (f"--namespace={namespace}", "--metrics-port=0")
    with operator_process(dev_cluster.kubeconfig, tmp_path / "op.log", *args, env=env) as op:
        yield op


def local_chain(bucket: str, secret: str, images: dict[str, str]) -> list[dict[str, Any]]:
    """The sample as written, pointed at the test's bucket and Secret, with the images
    built from this checkout (a chart install sets these as the operator's defaults)."""
    text = SAMPLE.read_text().replace("modelsmith-local/", f"{bucket}/")
    docs = [d for d in yaml.safe_load_all(text.replace("modelsmith-s3", secret)) if d]
    for doc in docs:
        doc["spec"]["image"] = images[IMAGE_OF[doc["kind"]]]
    return docs


def _status(kind: str, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP, namespace, PLURALS[kind], name
    )
    status: dict[str, Any] = obj.get("status", {})
    return status


def _finished(doc: dict[str, Any], namespace: str, op: OperatorProcess) -> dict[str, Any]:
    kind, name = doc["kind"], doc["metadata"]["name"]

    def ended() -> dict[str, Any] | None:
        status = _status(kind, namespace, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    # The first torch pod pulls ~6 GB into the node; training runs on two CPU cores.
    status = wait_for(ended, timeout=900, interval=2, what=f"{kind} {name} to finish")
    why = [
        f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
        for c in status.get("conditions", [])
    ]
    assert status["phase"] == "Succeeded", f"{kind} {name} failed: {why}"
    return status


def test_the_local_chain_runs_in_real_pods(
    chain_operator: OperatorProcess,
    namespace: str,
    pushed: dict[str, str],
    dev_s3: S3,
) -> None:
    core = client.CoreV1Api()
    core.create_namespaced_persistent_volume_claim(namespace, sample_claim())
    texts = samplecorpus.corpus()  # what the demo uploads: the stdlib's docstrings
    dev_s3.put("raw/corpus.jsonl", samplecorpus.jsonl([{"text": t} for t in texts]))
    dev_s3.put("chat/train.jsonl", samplecorpus.jsonl(samplecorpus.chat_set()))
    images = {name: pushed[name] for name in set(IMAGE_OF.values())}
    chain = local_chain(dev_s3.bucket, "s3", images)
    api = client.CustomObjectsApi()
    for doc in reversed(chain):  # downstream first: each waits for its input
        api.create_namespaced_custom_object(*GROUP, namespace, PLURALS[doc["kind"]], doc)
    data, pretrain, finetune, quantize = (_finished(d, namespace, chain_operator) for d in chain)

    # The shards are on the claim, with the token count the status reports.
    claim = core.read_namespaced_persistent_volume_claim("modelsmith-artifacts", namespace)
    root = Path(core.read_persistent_volume(claim.spec.volume_name).spec.host_path.path)
    shards = root / "shards" / "local-corpus"
    assert (shards / COMPLETION_MARKER).is_file()
    index = json.loads((shards / "index.json").read_text())
    assert data["outputs"]["metrics"]["tokens"] == index["tokens"] > 0
    counts = data["outputs"]["metrics"]
    assert counts["documents_in"] == len(texts)
    assert counts["documents_out"] <= len(set(texts)), "copied docstrings are gone"

    # The model learned: a fresh model's loss is about ln(vocabulary); it fell well below.
    metrics = pretrain["outputs"]["metrics"]
    assert metrics["steps"] == 300
    assert metrics["initial_loss"] == pytest.approx(math.log(index["vocabSize"]), abs=0.5)
    assert metrics["loss"] < metrics["initial_loss"] - 1.0, metrics
    assert (root / "models" / "local-llama" / COMPLETION_MARKER).is_file()

    # Fine-tuning lowered the held-out loss of the chat set.
    tuned = finetune["outputs"]["metrics"]
    assert tuned["eval_loss"] < tuned["eval_loss_before"], tuned

    # The quantized model passed its gate: the perplexity rose by less than allowed.
    gate = quantize["outputs"]["metrics"]
    assert gate["perplexity_increase_percent"] <= 10, gate
    assert quantize["outputs"]["uri"] == "pvc://modelsmith-artifacts/models/local-llama-chat-int8"

    pods = core.list_namespaced_pod(namespace).items
    assert {p.spec.node_name for p in pods} == {"modelsmith-node"}, "all real, none on kwok"
