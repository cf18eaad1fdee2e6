"""samples/local/ in real pods on the real node: raw text to an endpoint that answers,
with the two faults a cluster deals out mid-run.

One run of the chain (it takes minutes on two cores) serves every test here. The chart
installs the operator as a pod; the five resources are applied at once, as a user
would, and each waits for its fromRef. While they run, the training pod is deleted
once its first checkpoint is on the claim, and later the operator pod is deleted while
the FineTune runs. The tests then judge what the run left: the artifacts on the claim,
the metrics the pods reported in their termination messages, the children the
operators created, and the router's answers.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from modelsmith.contract import COMPLETION_MARKER
from modelsmith.devcluster import samplecorpus
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.nodeconfig import NODE_NAME
from tests.e2e.conftest import bucket_with_secret, chart_on_real_node
from tests.helpers import wait_for
from tests.integration.claims import sample_claim
from tests.workloads.canary_stack import broken_model

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "local"
API_KEY = "local-chat-test-key"
GROUP = ("modelsmith.io", "v1alpha1")
PLURALS = {
    "DataPipeline": "datapipelines",
    "PretrainJob": "pretrainjobs",
    "FineTune": "finetunes",
    "QuantizeJob": "quantizejobs",
    "InferenceService": "inferenceservices",
}
IMAGE_OF = {
    "DataPipeline": "data",
    "PretrainJob": "trainer",
    "FineTune": "trainer",
    "QuantizeJob": "quantizer",
    "InferenceService": "server",
}
OPERATOR_PODS = "app.kubernetes.io/name=modelsmith"
VERSIONS = {
    doc["kind"]: doc["spec"]["version"]
    for doc in yaml.safe_load_all((SAMPLES / "chain.yaml").read_text())
    if doc and "version" in doc.get("spec", {})
}
"""spec.version of each model in the local chain sample."""


@dataclass
class ChainRun:
    """What the run left behind, for the tests to judge."""

    namespace: str
    corpus: list[str]
    root: Path
    """The claim's directory on the node (the provisioner's hostPath)."""
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_training_pod: str = ""
    checkpoint_step_at_deletion: int = 0
    deleted_operator_pod: str = ""
    replacement_operator_pod: str = ""
    jobs_by_owner: dict[str, list[str]] = field(default_factory=dict)
    pods: list[client.V1Pod] = field(default_factory=list)
    unauthorized: int = 0
    answer: dict[str, Any] = field(default_factory=dict)
    router_url: str = ""


def local_chain(bucket: str, secret: str, images: dict[str, str]) -> list[dict[str, Any]]:
    """The samples as written, pointed at the test's bucket and Secret, with the images
    built from this checkout (a chart install sets these as the operator's defaults)."""
    text = (SAMPLES / "chain.yaml").read_text() + "---\n"
    text += (SAMPLES / "inferenceservice.yaml").read_text()
    text = text.replace("modelsmith-local/", f"{bucket}/").replace("modelsmith-s3", secret)
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        doc["spec"]["image"] = images[IMAGE_OF[doc["kind"]]]
    return docs


def _status(namespace: str, kind: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP, namespace, PLURALS[kind], name
    )
    status: dict[str, Any] = obj.get("status", {})
    return status


def _finished(namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    kind, name = doc["kind"], doc["metadata"]["name"]

    def ended() -> dict[str, Any] | None:
        status = _status(namespace, kind, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    # The first torch pod pulls ~6 GB into the node; training runs on two CPU cores.
    status = wait_for(ended, timeout=900, interval=2, what=f"{kind} {name} to finish")
    why = [
        f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
        for c in status.get("conditions", [])
    ]
    assert status["phase"] == "Succeeded", f"{kind} {name} failed: {why}"
    return status


def _claim_root(namespace: str) -> Path:
    core = client.CoreV1Api()

    def bound() -> str | None:
        claim = core.read_namespaced_persistent_volume_claim("modelsmith-artifacts", namespace)
        return claim.spec.volume_name if claim.status.phase == "Bound" else None

    volume = wait_for(bound, timeout=300, interval=1, what="the artifacts claim to bind")
    return Path(core.read_persistent_volume(volume).spec.host_path.path)


def _pods(namespace: str, selector: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api().list_namespaced_pod(namespace, label_selector=selector).items)


def _delete_training_pod_after_a_checkpoint(run: ChainRun) -> None:
    """`kubectl delete pod` of the trainer once a checkpoint is committed: SIGTERM, the
    grace period, a replacement pod from the Job."""
    pointer = run.root / "models" / "local-llama-checkpoints" / "latest"
    wait_for(pointer.is_file, timeout=900, interval=0.2, what=f"a checkpoint at {pointer}")
    run.checkpoint_step_at_deletion = int(pointer.read_text().strip().removeprefix("step-"))
    (pod,) = _pods(run.namespace, "modelsmith.io/pretrainjob=local-llama")
    run.deleted_training_pod = pod.metadata.name
    client.CoreV1Api().delete_namespaced_pod(pod.metadata.name, run.namespace)


def _delete_operator_pod_during_finetune(run: ChainRun) -> None:
    def finetune_running() -> bool:
        pods = _pods(run.namespace, "modelsmith.io/finetune=local-llama-chat")
        return any(p.status.phase == "Running" for p in pods)

    wait_for(finetune_running, timeout=900, interval=0.5, what="the FineTune pod to run")
    (pod,) = [p for p in _pods(run.namespace, OPERATOR_PODS) if not p.metadata.deletion_timestamp]
    run.deleted_operator_pod = pod.metadata.name
    client.CoreV1Api().delete_namespaced_pod(pod.metadata.name, run.namespace)

    def replacement() -> str | None:
        for p in _pods(run.namespace, OPERATOR_PODS):
            statuses = p.status.container_statuses or []
            if p.metadata.name != pod.metadata.name and statuses and statuses[0].ready:
                return str(p.metadata.name)
        return None

    run.replacement_operator_pod = wait_for(replacement, timeout=300, what="a new operator pod")


def _children(namespace: str) -> dict[str, list[str]]:
    """Jobs and Deployments by owner ("Kind/name"): what the operators created."""
    owned: dict[str, list[str]] = {}
    batch, apps = client.BatchV1Api(), client.AppsV1Api()
    objects = [*batch.list_namespaced_job(namespace).items]
    objects += apps.list_namespaced_deployment(namespace).items
    for obj in objects:
        for ref in obj.metadata.owner_references or []:
            owned.setdefault(f"{ref.kind}/{ref.name}", []).append(obj.metadata.name)
    return owned


def _post(url: str, body: dict[str, Any], key: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (pod IP)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw or b"{}")
        except ValueError:  # a proxy's or server's plain-text error page
            return err.code, {"body": raw.decode(errors="replace")}


def _ask(run: ChainRun) -> None:
    """A chat completion through the router, at its pod IP (the host reaches pod IPs;
    ClusterIPs live in the node's network namespace)."""

    def router_ip() -> str | None:
        for pod in _pods(run.namespace, "app.kubernetes.io/component=router"):
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
                return str(pod.status.pod_ip)
        return None

    url = f"http://{wait_for(router_ip, timeout=120, what='a Ready router pod')}:8080"
    run.router_url = url
    body = {
        "model": "local-chat",
        "messages": [{"role": "user", "content": "What does json.dumps do?"}],
        "max_tokens": 24,
        # Greedy: at OpenAI's default temperature of 1 a model trained for a minute
        # sometimes samples its end token first, and the answer is empty (seen in CI).
        "temperature": 0,
    }
    run.unauthorized, _ = _post(f"{url}/v1/chat/completions", body, None)
    code, run.answer = _post(f"{url}/v1/chat/completions", body, API_KEY)
    assert code == 200, run.answer


@pytest.fixture(scope="module")
def chain(dev_cluster: DevCluster, crds: list[str], pushed: dict[str, str]) -> Iterator[ChainRun]:
    operator = pushed["operator"]  # the router runs it too: its tag is the workloads' default
    tag = operator.rsplit(":", 1)[1]
    with chart_on_real_node(dev_cluster, operator, "chain", workload_tag=tag) as ns:
        core = client.CoreV1Api()
        core.create_namespaced_persistent_volume_claim(ns, sample_claim())
        secret = {"metadata": {"name": "local-chat-key"}, "stringData": {"api-key": API_KEY}}
        core.create_namespaced_secret(ns, secret)
        s3 = bucket_with_secret(dev_cluster, ns)
        texts = samplecorpus.corpus()  # what the demo uploads: the stdlib's docstrings
        s3.put("raw/corpus.jsonl", samplecorpus.jsonl([{"text": t} for t in texts]))
        s3.put("chat/train.jsonl", samplecorpus.jsonl(samplecorpus.chat_set()))
        docs = local_chain(s3.bucket, "s3", {name: pushed[name] for name in IMAGE_OF.values()})
        api = client.CustomObjectsApi()
        for doc in reversed(docs):  # downstream first: each waits for its input
            api.create_namespaced_custom_object(*GROUP, ns, PLURALS[doc["kind"]], doc)

        run = ChainRun(ns, texts, _claim_root(ns))
        _delete_training_pod_after_a_checkpoint(run)
        _delete_operator_pod_during_finetune(run)
        for doc in docs[:-1]:
            run.status[doc["kind"]] = _finished(ns, doc)

        def ready() -> dict[str, Any] | None:
            status = _status(ns, "InferenceService", "local-chat")
            return status if status.get("phase") == "Ready" else None

        run.status["InferenceService"] = wait_for(
            ready, timeout=600, interval=2, what="the InferenceService to be Ready"
        )
        _ask(run)
        run.jobs_by_owner = _children(ns)
        run.pods = list(core.list_namespaced_pod(ns).items)
        yield run


def test_the_chain_publishes_real_artifacts_in_real_pods(chain: ChainRun) -> None:
    data = chain.status["DataPipeline"]
    shards = chain.root / "shards" / "local-corpus"
    assert (shards / COMPLETION_MARKER).is_file()
    index = json.loads((shards / "index.json").read_text())
    counts = data["outputs"]["metrics"]
    assert counts["tokens"] == index["tokens"] > 0
    assert counts["documents_in"] == len(chain.corpus)
    assert counts["documents_out"] <= len(set(chain.corpus)), "copied docstrings are gone"

    # The model learned: a fresh model's loss is about ln(vocabulary); it fell well below.
    metrics = chain.status["PretrainJob"]["outputs"]["metrics"]
    assert metrics["steps"] == 300
    assert metrics["initial_loss"] == pytest.approx(math.log(index["vocabSize"]), abs=0.5)
    assert metrics["loss"] < metrics["initial_loss"] - 1.0, metrics
    # Each model's spec.version, on its workload's word: recorded in its manifest first.
    for kind, version in VERSIONS.items():
        assert chain.status[kind]["outputs"]["version"] == version, chain.status[kind]
    model = json.loads((chain.root / "models" / "local-llama" / COMPLETION_MARKER).read_text())
    assert model["version"] == VERSIONS["PretrainJob"]
    assert (chain.root / "models" / "local-llama" / COMPLETION_MARKER).is_file()

    tuned = chain.status["FineTune"]["outputs"]["metrics"]
    assert tuned["eval_loss"] < tuned["eval_loss_before"], tuned

    quantized = chain.status["QuantizeJob"]["outputs"]
    assert quantized["metrics"]["perplexity_increase_percent"] <= 10, quantized
    assert quantized["uri"] == "pvc://modelsmith-artifacts/models/local-llama-chat-int8"
    assert (chain.root / "models" / "local-llama-chat-int8" / COMPLETION_MARKER).is_file()

    assert {p.spec.node_name for p in chain.pods} == {NODE_NAME}, "all real, none on kwok"


def test_a_deleted_training_pod_is_replaced_and_resumes_from_its_checkpoint(
    chain: ChainRun,
) -> None:
    status = chain.status["PretrainJob"]
    assert chain.checkpoint_step_at_deletion >= 100
    # The replacement read the checkpoint the first pod left on the claim (its own, or
    # the one SIGTERM made it save on the way out), not step 0.
    resumed = status["outputs"]["metrics"]["resumed_from_step"]
    assert chain.checkpoint_step_at_deletion <= resumed < 300, status["outputs"]
    trainers = [p for p in chain.pods if p.metadata.labels.get("modelsmith.io/pretrainjob")]
    assert chain.deleted_training_pod not in {p.metadata.name for p in trainers}
    assert status["restarts"] >= 1, status


def test_a_deleted_operator_pod_is_replaced_and_creates_no_duplicates(chain: ChainRun) -> None:
    assert chain.replacement_operator_pod != chain.deleted_operator_pod
    expected = {
        "DataPipeline/local-corpus": 1,
        "PretrainJob/local-llama": 1,  # one Job: its pods were retried, not it
        "FineTune/local-llama-chat": 1,
        "QuantizeJob/local-llama-chat-int8": 1,
        "InferenceService/local-chat": 2,  # one revision's Deployment and the router's
    }
    found = {owner: len(chain.jobs_by_owner.get(owner, [])) for owner in expected}
    assert found == expected, chain.jobs_by_owner


def test_the_endpoint_answers_with_the_trained_model_and_enforces_its_key(
    chain: ChainRun,
) -> None:
    assert chain.unauthorized == 401
    assert chain.answer["model"] == "local-chat"
    assert chain.answer["usage"]["completion_tokens"] > 0, chain.answer
    content = chain.answer["choices"][0]["message"]["content"]
    assert content, chain.answer
    print("the model trained minutes earlier answers:", content)


def test_a_server_that_cannot_load_its_model_says_why_in_ready(chain: ChainRun) -> None:
    """A user's likely mistake: serving a directory that was never published (an
    adapter copied by hand, no completion marker). The real server pod refuses it and
    exits; its termination message, not a bare "not ready", reaches Ready as
    RevisionFailing."""
    adapter = chain.root / "models" / "local-adapter-only"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    for path in (adapter, adapter / "adapter_config.json"):
        shutil.chown(path, 10001, 10001)
    sample = yaml.safe_load((SAMPLES / "inferenceservice.yaml").read_text())
    spec = sample["spec"] | {
        "model": {"uri": "pvc://modelsmith-artifacts/models/local-adapter-only"},
        "image": _served_image(chain),
    }
    spec.pop("apiKeySecret")
    body = {**sample, "metadata": {"name": "local-adapter"}, "spec": spec}
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(*GROUP, chain.namespace, PLURALS["InferenceService"], body)
    try:

        def failing() -> dict[str, Any] | None:
            status = _status(chain.namespace, "InferenceService", "local-adapter")
            ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
            return ready[0] if ready and ready[0]["reason"] == "RevisionFailing" else None

        ready = wait_for(failing, timeout=240, interval=2, what="Ready=False RevisionFailing")
        assert ready["status"] == "False", ready
        message = ready["message"]
        assert "exited 2" in message, message  # the runtime's code for bad input
        assert "IncompleteArtifact" in message and "not (fully) published" in message, message
        status = _status(chain.namespace, "InferenceService", "local-adapter")
        assert status["phase"] == "Pending", status
    finally:
        api.delete_namespaced_custom_object(
            *GROUP, chain.namespace, PLURALS["InferenceService"], "local-adapter"
        )


def _served_image(run: ChainRun) -> str:
    """The server image the chain's own InferenceService runs (its pods' spec)."""
    for pod in run.pods:
        labels = pod.metadata.labels or {}
        if labels.get("app.kubernetes.io/component") == "server":
            return str(pod.spec.containers[0].image)
    raise AssertionError("the chain left no server pod to take the image from")


CANARY_SAMPLE = yaml.safe_load((SAMPLES / "canary.yaml").read_text())["spec"]
CANARY = CANARY_SAMPLE["canary"]
ANALYSIS_S = int(CANARY["analysisInterval"].removesuffix("s"))
SCRAPE_S = 5  # the dev Prometheus's scrape interval (prometheus.DEV_INTERVAL)


class Load:
    """Chat completions through the router, one after another, from a thread: what a
    client saw while the weights moved (status codes, and when the first error came)."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/v1/chat/completions"
        self.codes: Counter[int] = Counter()
        self.first_error_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": "local-chat", "messages": [{"role": "user", "content": "hi"}]}
        body["max_tokens"] = 4
        while not self._stop.is_set():
            try:
                code, _ = _post(self.url, body, API_KEY)
            except (OSError, ValueError):
                code = 0  # the connection failed: a failed request too
            self.codes[code] += 1
            if code != 200 and self.first_error_at is None:
                self.first_error_at = time.time()
            time.sleep(0.1)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


@dataclass
class Rollout:
    status: dict[str, Any]
    codes: Counter[int]
    first_error_at: float | None
    old_revision: str
    deployments: set[str]
    """The Deployments once the rollout ended."""


def _roll_out(run: ChainRun, model: dict[str, Any], stage: str) -> Rollout:
    """Apply a new model with the canary spec under load; wait for the rollout's end."""
    api = client.CustomObjectsApi()
    old = _status(run.namespace, "InferenceService", "local-chat")["stableRevision"]
    patch = {"spec": {"model": model, "canary": CANARY}}
    with Load(run.router_url) as load:
        time.sleep(2)  # the stable revision answers before anything moves
        api.patch_namespaced_custom_object(
            *GROUP, run.namespace, "inferenceservices", "local-chat", patch
        )

        def ended() -> dict[str, Any] | None:
            status = _status(run.namespace, "InferenceService", "local-chat")
            canary = status.get("canary") or {}
            done = canary.get("revision") != old and canary.get("stage") in (
                "Promoted",
                "RolledBack",
            )
            return status if done else None

        status = wait_for(ended, timeout=600, interval=1, what=f"the canary to be {stage}")
        time.sleep(5)  # the old revision goes away under load
    print(f"canary {stage}:", json.dumps(status["canary"]["history"], indent=1))
    names = {
        d.metadata.name for d in client.AppsV1Api().list_namespaced_deployment(run.namespace).items
    }
    return Rollout(status, load.codes, load.first_error_at, old, names)


@pytest.fixture(scope="module")
def good_canary(chain: ChainRun) -> Rollout:
    """The unquantized FineTune model as the next revision (samples/local/canary.yaml's
    model and canary, applied over the running service): analysis promotes it."""
    return _roll_out(chain, CANARY_SAMPLE["model"], "Promoted")


@pytest.fixture(scope="module")
def bad_canary(chain: ChainRun, good_canary: Rollout) -> Rollout:
    """A corrupt copy of that model (NaN output layer: it loads, then every generation
    fails), put on the claim as an upload would: analysis rolls it back alone."""
    models = chain.root / "models"
    broken_model(str(models / "local-llama-chat"), str(models / "local-llama-chat-broken"))
    broken = models / "local-llama-chat-broken"
    for path in [broken, *broken.rglob("*")]:  # as the pods' user (10001) would own it
        shutil.chown(path, 10001, 10001)
    uri = "pvc://modelsmith-artifacts/models/local-llama-chat-broken"
    # A merge patch: fromRef must go (null) for uri to stand alone, as the CRD requires.
    return _roll_out(chain, {"fromRef": None, "uri": uri}, "RolledBack")


def test_a_good_canary_is_promoted_by_scraped_metrics_with_no_failed_request(
    good_canary: Rollout,
) -> None:
    status = good_canary.status
    canary = status["canary"]
    assert canary["stage"] == "Promoted", canary
    assert status["stableRevision"] == canary["revision"] != good_canary.old_revision
    assert status["modelUri"] == "pvc://modelsmith-artifacts/models/local-llama-chat"
    # The promoted revision serves the FineTune's model: its version, and no canary left.
    assert (status.get("stableVersion"), status.get("canaryVersion")) == (
        VERSIONS["FineTune"],
        None,
    )
    weights = [e["weight"] for e in canary["history"] if e["reason"] == "StepAdvanced"]
    assert weights == [25, 50], canary["history"]
    # Every analysis read a real value from Prometheus: the router's scraped series.
    assert [c["verdict"] for c in canary["checks"]] == ["Pass"], canary["checks"]
    assert canary["checks"][0]["value"] == 0.0
    assert set(good_canary.codes) == {200}, good_canary.codes
    assert good_canary.codes[200] > 20, "load ran through the rollout"
    assert good_canary.old_revision not in good_canary.deployments, "the old revision is gone"
    assert canary["revision"] in good_canary.deployments


def test_a_bad_canary_is_rolled_back_by_analysis_within_two_intervals(
    bad_canary: Rollout, good_canary: Rollout
) -> None:
    status = bad_canary.status
    canary = status["canary"]
    assert canary["stage"] == "RolledBack", canary
    assert status["stableRevision"] == good_canary.status["stableRevision"], "stable stays"
    assert status.get("stableVersion") == VERSIONS["FineTune"], "and so does its version"
    assert status["phase"] == "Degraded"
    (failed,) = [c for c in canary["checks"] if c["name"] == "errors"]
    assert failed["verdict"] == "Fail" and failed.get("value", 0) > 0.05, failed
    assert bad_canary.first_error_at is not None, "the broken model failed requests"
    rolled = canary["history"][-1]  # the analysis that failed took the weight to 0
    assert (rolled["reason"], rolled["weight"]) == ("AnalysisFailed", 0), canary["history"]
    rolled_at = datetime.fromisoformat(rolled["time"].replace("Z", "+00:00")).timestamp()
    # The breach shows in Prometheus at its next scrape; from there, two analyses.
    assert rolled_at - bad_canary.first_error_at <= 2 * ANALYSIS_S + SCRAPE_S, canary["history"]
    assert bad_canary.codes[200] > 0 and set(bad_canary.codes) <= {200, 500, 502}
