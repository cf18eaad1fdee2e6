"""The Helm chart, rendered by the real helm and installed into the real API server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith.devcluster import tools
from modelsmith.devcluster.cluster import DevCluster

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelsmith"


def helm(cluster: DevCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(tools.binary(tools.HELM, "helm")), f"--kubeconfig={cluster.kubeconfig}", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _render(cluster: DevCluster, *sets: str) -> list[dict[str, Any]]:
    argv = ["template", "ms", str(CHART), "--namespace", "ops"]
    for item in sets:
        argv += ["--set", item]
    return [d for d in yaml.safe_load_all(helm(cluster, *argv).stdout) if d]


def test_chart_lints_clean(dev_cluster: DevCluster) -> None:
    out = helm(dev_cluster, "lint", "--strict", str(CHART)).stdout
    assert "0 chart(s) failed" in out


def test_crds_follow_the_enabled_and_keep_switches(dev_cluster: DevCluster) -> None:
    crds = [d for d in _render(dev_cluster) if d["kind"] == "CustomResourceDefinition"]
    assert crds, "CRDs are on by default"
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)
    unkept = [
        d for d in _render(dev_cluster, "crds.keep=false") if d["kind"].endswith("Definition")
    ]
    assert unkept
    assert all("annotations" not in c["metadata"] for c in unkept)
    assert not [
        d for d in _render(dev_cluster, "crds.enabled=false") if d["kind"].endswith("Definition")
    ]


def test_watch_namespaces_become_operator_flags(dev_cluster: DevCluster) -> None:
    docs = _render(dev_cluster, "watchNamespaces={ml,research}")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "run",
        "--namespace=ml",
        "--namespace=research",
        "--metrics-port=8080",
        "--status-port=8081",
    ]
    env = {
        e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELSMITH_STATUS_URL"].endswith(".svc:8081")


def test_values_schema_rejects_unknown_keys(dev_cluster: DevCluster) -> None:
    proc = helm(dev_cluster, "template", "ms", str(CHART), "--set", "replicas=3", check=False)
    assert proc.returncode != 0
    assert "replicas" in proc.stderr


def test_chart_installs_and_its_rbac_is_what_the_operator_needs(
    dev_cluster: DevCluster, crds: list[str], namespace: str
) -> None:
    """CRDs come from the session (crds.enabled=false): can-i needs them to resolve names."""
    helm(
        dev_cluster,
        "install",
        "ms",
        str(CHART),
        "--namespace",
        namespace,
        "--set",
        "crds.enabled=false",
        "--wait",
        "--timeout",
        "90s",
    )
    deploy = json.loads(
        dev_cluster.kubectl("get", "deployment", "ms-modelsmith", "-n", namespace, "-o", "json")
    )
    assert deploy["status"]["readyReplicas"] == 1
    sa = f"system:serviceaccount:{namespace}:ms-modelsmith"

    def can(verb: str, resource: str) -> bool:
        out = dev_cluster.kubectl(
            "auth", "can-i", verb, resource, f"--as={sa}", "-n", "anywhere", check=False
        )
        return out.strip() == "yes"

    assert can("patch", "datapipelines.modelsmith.io/status")
    assert can("create", "jobs.batch")
    assert can("create", "deployments.apps")
    assert can("create", "roles.rbac.authorization.k8s.io")
    assert not can("escalate", "roles.rbac.authorization.k8s.io")
    assert can("watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can("get", "secrets")
    assert not can("delete", "datapipelines.modelsmith.io")
    helm(dev_cluster, "uninstall", "ms", "--namespace", namespace, "--wait")
