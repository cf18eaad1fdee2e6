"""The chart's life on the real API server: install, RBAC, `helm test`, upgrade, uninstall.

kwok runs no containers, so the Deployment's operator pod is only scheduled and marked
ready. What the chart's ServiceAccount may do is proven by running the real operator as
a process that authenticates with that account's token and reconciling a FineTune and
an InferenceService through it: every request the operator makes goes through the
chart's ClusterRole, and a missing verb shows up as a Forbidden in its log and a
resource that never gets there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from modelsmith import crdgen
from modelsmith.api import KINDS
from modelsmith.devcluster import tools
from modelsmith.devcluster.cluster import DevCluster
from tests.helpers import free_port, wait_for
from tests.integration.operator_process import operator_process, token_kubeconfig
from tests.integration.test_chart import CHART, helm

pytestmark = pytest.mark.integration

GROUP = ("modelsmith.io", "v1alpha1")
ACCOUNT = "ms-modelsmith"


@dataclass
class Release:
    namespace: str
    installed: bool = True


@pytest.fixture(scope="module")
def release(dev_cluster: DevCluster, crds: list[str]) -> Iterator[Release]:
    """The chart with its CRDs, taking over the ones this test session applied."""
    ns = f"ms-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", ns)
    helm(
        dev_cluster,
        *("install", "ms", str(CHART), "--namespace", ns),
        # Other tests of this session name node paths: no cluster-wide node-path policy.
        *("--set", "storage.allowNodePaths=true"),
        *("--take-ownership", "--force-conflicts", "--wait", "--timeout", "90s"),
    )
    rel = Release(ns)
    yield rel
    if rel.installed:
        helm(dev_cluster, "uninstall", "ms", "--namespace", ns, "--wait", check=False)
    # Later tests expect the CRDs exactly as the models generate them.
    for info in KINDS:
        dev_cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crdgen.render(info)
        )
    dev_cluster.kubectl("delete", "namespace", ns, "--wait=false")


def _kubectl_as(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    kubectl = tools.binary(tools.KUBERNETES, "kubectl")
    argv = [str(kubectl), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _create(namespace: str, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi().create_namespaced_custom_object(*GROUP, namespace, plural, body)


def _status(namespace: str, plural: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi().get_namespaced_custom_object(*GROUP, namespace, plural, name)
    status: dict[str, Any] = obj.get("status") or {}
    return status


FINETUNE = {
    "apiVersion": "modelsmith.io/v1alpha1",
    "kind": "FineTune",
    "metadata": {"name": "chat"},
    "spec": {
        "baseModel": {"uri": "file:///models/base"},
        "dataset": {"uri": "file:///data/chat.jsonl"},
        "format": "chat",
        "method": "lora",
        "resources": {"cpu": "100m"},
        "output": {"uri": "file:///models/chat"},
    },
}
INFERENCE = {
    "apiVersion": "modelsmith.io/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "chat"},
    "spec": {"model": {"uri": "file:///models/chat"}, "resources": {"cpu": "100m"}},
}


def test_the_chart_identity_is_enough_to_reconcile_finetune_and_inference(
    dev_cluster: DevCluster, release: Release, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = token_kubeconfig(dev_cluster, release.namespace, ACCOUNT, tmp_path / "sa.yaml")
    health = free_port()
    args = ("--namespace", namespace, "--metrics-port=0", f"--health-port={health}")
    with operator_process(kubeconfig, tmp_path / "operator.log", *args) as op:
        _create(namespace, "finetunes", FINETUNE)
        _create(namespace, "inferenceservices", INFERENCE)
        wait_for(
            lambda: _status(namespace, "finetunes", "chat").get("phase") == "Succeeded",
            timeout=120,
            what=f"the FineTune to succeed; operator log:\n{op.output()[-3000:]}",
        )
        wait_for(
            lambda: _status(namespace, "inferenceservices", "chat").get("phase") == "Ready",
            timeout=120,
            what=f"the InferenceService to be Ready; operator log:\n{op.output()[-3000:]}",
        )
        # The check `helm test` runs in the cluster, here against this very operator.
        check = subprocess.run(
            [sys.executable, str(CHART / "files" / "check_ready.py")],
            env=os.environ | {"HEALTH_URL": f"http://127.0.0.1:{health}/healthz"},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        log = op.output()
    assert check.returncode == 0, check.stderr
    assert " 200 " in check.stdout
    assert "forbidden" not in log.lower(), log[-3000:]
    # What the reconciles made, made with the chart's identity.
    assert client.BatchV1Api().read_namespaced_job("chat-run", namespace)
    router = client.RbacAuthorizationV1Api().read_namespaced_role_binding("chat-router", namespace)
    assert router.subjects[0].name == "chat-router"


def test_the_chart_identity_is_not_cluster_admin(
    dev_cluster: DevCluster, release: Release, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = token_kubeconfig(dev_cluster, release.namespace, ACCOUNT, tmp_path / "sa.yaml")
    whoami = _kubectl_as(kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{release.namespace}:{ACCOUNT}"
    denied = [
        ("get", "secrets", "-n", namespace),
        ("delete", "crd", "finetunes.modelsmith.io"),
        ("delete", "finetunes.modelsmith.io", "chat", "-n", namespace),
        ("create", "clusterrolebinding", "mine", "--clusterrole=cluster-admin", "--user=me"),
        ("create", "namespace", "mine"),
    ]
    for args in denied:
        proc = _kubectl_as(kubeconfig, *args)
        assert proc.returncode != 0, args
        assert "forbidden" in proc.stderr.lower(), (args, proc.stderr)
    everything = _kubectl_as(kubeconfig, "auth", "can-i", "*", "*", "--all-namespaces")
    assert everything.stdout.strip() == "no"


def test_helm_test_hook_passes(dev_cluster: DevCluster, release: Release) -> None:
    """On kwok the hook's Job is only scheduled and completed; its script is run for
    real against a real operator in the reconcile test above."""
    out = helm(dev_cluster, "test", "ms", "--namespace", release.namespace, "--timeout", "90s")
    assert "ms-modelsmith-test-ready" in out.stdout
    assert "Succeeded" in out.stdout


def _chart_with_extra_column(dest: Path) -> Path:
    chart = dest / "modelsmith"
    shutil.copytree(CHART, chart)
    crd = chart / "templates" / "crds" / "finetunes.modelsmith.io.yaml"
    text = crd.read_text()
    column = "    - name: Method\n      type: string\n      jsonPath: .spec.method\n"
    crd.write_text(
        text.replace(
            "    additionalPrinterColumns:\n", f"    additionalPrinterColumns:\n{column}", 1
        )
    )
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1-upgrade"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return chart


def test_upgrade_changes_a_crd_and_uninstall_keeps_crds_and_resources(
    dev_cluster: DevCluster, release: Release, namespace: str, tmp_path: Path
) -> None:
    helm(
        dev_cluster,
        *("upgrade", "ms", str(_chart_with_extra_column(tmp_path))),
        *("--namespace", release.namespace, "--wait", "--timeout", "90s"),
        # The session applied these CRDs with `kubectl apply --server-side` before the
        # release took them over, so kubectl still co-owns their fields: what anyone
        # moving from `kubectl apply -f crds/` to the chart needs once too.
        "--force-conflicts",
    )
    crd = client.ApiextensionsV1Api().read_custom_resource_definition("finetunes.modelsmith.io")
    columns = [c.name for c in crd.spec.versions[0].additional_printer_columns]
    assert columns[0] == "Method", columns
    _create(namespace, "finetunes", FINETUNE)
    table = dev_cluster.kubectl("get", "finetunes", "-n", namespace)
    assert table.split()[:2] == ["NAME", "METHOD"]
    assert table.splitlines()[1].split()[:2] == ["chat", "lora"]

    helm(dev_cluster, "uninstall", "ms", "--namespace", release.namespace, "--wait")
    release.installed = False
    for info in KINDS:
        assert client.ApiextensionsV1Api().read_custom_resource_definition(info.crd_name)
    kept = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP, namespace, "finetunes", "chat"
    )
    assert kept["spec"]["method"] == "lora"
    deployments = client.AppsV1Api().list_namespaced_deployment(release.namespace).items
    assert not deployments, "the operator went with the release"
    roles = client.RbacAuthorizationV1Api().list_cluster_role(
        label_selector="app.kubernetes.io/instance=ms"
    )
    assert not roles.items
