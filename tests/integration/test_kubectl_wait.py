"""What a user sees with kubectl: `kubectl wait` on every kind, and the printer columns.

The samples are applied with the real kubectl, all at once, and waited on with the real
`kubectl wait --for=condition=…`, the way scripts and CI pipelines gate on our resources.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from modelsmith.devcluster.cluster import DevCluster
from tests.integration.claims import bound_claims, sample_claim

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
BATCH = {
    "datapipeline/tiny-corpus": "Succeeded",
    "pretrainjob/tiny-llama": "Succeeded",
    "finetune/tiny-llama-chat": "Succeeded",
    "quantizejob/tiny-llama-chat-int4": "Succeeded",
}


def test_kubectl_wait_and_get_work_on_every_kind(
    operator: KopfRunner, dev_cluster: DevCluster, namespace: str
) -> None:
    with bound_claims(namespace, sample_claim()):
        _apply_and_wait(dev_cluster, namespace)


def _apply_and_wait(dev_cluster: DevCluster, namespace: str) -> None:
    for sample in ("datapipeline.yaml", "chain.yaml", "inferenceservice.yaml"):
        dev_cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / sample))

    waited = dev_cluster.run_kubectl(
        *("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=180s", *BATCH)
    )
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.count("condition met") == len(BATCH)
    serving = dev_cluster.run_kubectl(
        *("wait", "-n", namespace, "--for=condition=Ready", "--timeout=120s"),
        "inferenceservice/tiny-chat",
    )
    assert serving.returncode == 0, serving.stderr

    # One `kubectl get` over the category lists all five, each with its phase column.
    table = dev_cluster.kubectl("get", "modelsmith", "-n", namespace).splitlines()
    # kubectl prints one table per kind, each with its header, blank lines between.
    rows = {line.split()[0]: line for line in table if line and not line.startswith("NAME")}
    for ref in BATCH:
        kind, name = ref.split("/")
        row = next(r for key, r in rows.items() if key.endswith(f"/{name}") and kind in key)
        assert " Succeeded " in f"{row} ", row
    isvc = next(r for key, r in rows.items() if key.startswith("inferenceservice"))
    assert " Ready " in f"{isvc} ", isvc

    headers = {
        kind: dev_cluster.kubectl("get", kind, "-n", namespace).splitlines()[0].split()
        for kind in ("datapipelines", "pretrainjobs", "finetunes", "quantizejobs")
    }
    for kind, header in headers.items():
        assert header[:2] == ["NAME", "PHASE"], (kind, header)
        assert "AGE" in header
    isvc_header = dev_cluster.kubectl("get", "inferenceservices", "-n", namespace).split("\n")[0]
    assert "PHASE" in isvc_header.split()
