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
import urllib.error
import urllib.request
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

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "local"
SAMPLE = SAMPLES / "chain.yaml"
API_KEY = "local-chat-test-key"
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
    dev_cluster: DevCluster,
    crds: list[str],
    namespace: str,
    tmp_path: Path,
    pushed: dict[str, str],
) -> Iterator[OperatorProcess]:
    # The router runs the operator image: the one built from this checkout.
    registry, tag = pushed["operator"].rsplit("/operator:", 1)
    env = {
        "MODELSMITH_ALLOW_NODE_PATHS": "false",
        "MODELSMITH_IMAGE_REGISTRY": registry,
        "MODELSMITH_IMAGE_TAG": tag,
    }
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

    _serve_and_ask(namespace, pushed["server"])


def _post(url: str, body: dict[str, Any], key: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (pod IP)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _serve_and_ask(namespace: str, server_image: str) -> None:
    """samples/local/inferenceservice.yaml: the quantized model behind the router, asked
    through the router's pod (the host reaches pod IPs; ClusterIPs live in the node)."""
    core = client.CoreV1Api()
    secret = {"metadata": {"name": "local-chat-key"}, "stringData": {"api-key": API_KEY}}
    core.create_namespaced_secret(namespace, secret)
    isvc = yaml.safe_load((SAMPLES / "inferenceservice.yaml").read_text())
    isvc["spec"]["image"] = server_image
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(*GROUP, namespace, "inferenceservices", isvc)

    def ready() -> dict[str, Any] | None:
        obj = api.get_namespaced_custom_object(*GROUP, namespace, "inferenceservices", "local-chat")
        status: dict[str, Any] = obj.get("status", {})
        return status if status.get("phase") == "Ready" else None

    wait_for(ready, timeout=600, interval=2, what="the InferenceService to be Ready")

    def router_ip() -> str | None:
        pods = core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=router"
        ).items
        ready_pods = [
            p
            for p in pods
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return ready_pods[0].status.pod_ip if ready_pods else None

    url = f"http://{wait_for(router_ip, timeout=120, what='a Ready router pod')}:8080"
    body = {
        "model": "local-chat",
        "messages": [{"role": "user", "content": "What does json.dumps do?"}],
        "max_tokens": 24,
    }
    code, _ = _post(f"{url}/v1/chat/completions", body, None)
    assert code == 401, "the API key is enforced"
    code, answer = _post(f"{url}/v1/chat/completions", body, API_KEY)
    assert code == 200, answer
    assert answer["usage"]["completion_tokens"] > 0, answer
    assert answer["choices"][0]["message"]["content"], answer
    print("the model trained minutes earlier answers:", answer["choices"][0]["message"]["content"])
