"""The Helm chart, rendered by the real helm and installed into the real API server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith import k8s
from modelsmith.api import KINDS
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
        "--health-port=8082",
        "--log-format=json",
        "--peering=ms-modelsmith",
    ]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSMITH_STATUS_URL"].endswith(".svc:8081")


def test_values_schema_rejects_unknown_keys(dev_cluster: DevCluster) -> None:
    proc = helm(dev_cluster, "template", "ms", str(CHART), "--set", "replica=3", check=False)
    assert proc.returncode != 0
    assert "replica" in proc.stderr


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


def _kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs if d["kind"] != "CustomResourceDefinition"}


def test_default_render_is_peered_budgeted_and_restricted(dev_cluster: DevCluster) -> None:
    kinds = _kinds(_render(dev_cluster))
    assert "NetworkPolicy" not in kinds and "ServiceMonitor" not in kinds
    assert kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--peering=ms-modelsmith" in container["args"]
    assert kinds["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108 (the mount path, not a file)


def test_standalone_render_never_runs_two_operators(dev_cluster: DevCluster) -> None:
    kinds = _kinds(_render(dev_cluster, "peering.enabled=false"))
    deploy = kinds["Deployment"]
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(
        a.startswith("--peering")
        for a in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert not any("kopf.dev" in r["apiGroups"] for r in kinds["ClusterRole"]["rules"])


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (("peering.enabled=false", "replicas=2"), "replicas"),
        (("replicas=two",), "replicas"),
        (("logFormat=xml",), "logFormat"),
        (("metrics.serviceMonitor.interval=often",), "interval"),
        (("podDisruptionBudget.maxUnavailable=half",), "maxUnavailable"),
    ],
)
def test_values_schema_rejects_wrong_values(
    dev_cluster: DevCluster, sets: tuple[str, ...], complaint: str
) -> None:
    argv = ["template", "ms", str(CHART)]
    for item in sets:
        argv += ["--set", item]
    proc = helm(dev_cluster, *argv, check=False)
    assert proc.returncode != 0, sets
    assert complaint in proc.stderr


def test_network_policy_and_service_monitor_when_asked(dev_cluster: DevCluster) -> None:
    kinds = _kinds(
        _render(
            dev_cluster,
            "networkPolicy.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=kube-prometheus",
        )
    )
    policy = kinds["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    ports = [rule["ports"][0]["port"] for rule in policy["ingress"]]
    assert ports == ["status", "health", "metrics"]
    reporters = policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert reporters == {"app.kubernetes.io/managed-by": "modelsmith"}
    monitor = kinds["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service_ports = {p["name"] for p in kinds["Service"]["spec"]["ports"]}
    assert {"metrics", "status", "health"} <= service_ports


def test_cluster_role_names_every_resource_the_operator_touches(dev_cluster: DevCluster) -> None:
    """No wildcards, and nothing the operator's API client can call left out."""
    rules = _kinds(_render(dev_cluster))["ClusterRole"]["rules"]
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
    granted = {
        (group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for (api_version, _kind), plural in k8s._PLURALS.items():
        group = api_version.rpartition("/")[0]
        assert (group, plural) in granted, f"{api_version} {plural}: not in the ClusterRole"
    for info in KINDS:
        assert ("modelsmith.io", info.plural) in granted
        assert ("modelsmith.io", f"{info.plural}/status") in granted
