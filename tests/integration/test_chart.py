"""The Helm chart, rendered by the real helm and installed into the real API server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith import k8s
from modelsmith.api import KINDS
from modelsmith.devcluster import tools
from modelsmith.devcluster.cluster import DevCluster
from tests.integration.claims import bound_claims, sample_claim
from tests.integration.operator_process import operator_process, token_kubeconfig

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "charts" / "modelsmith"
SAMPLES = CHART.parents[1] / "samples"


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


def test_watch_namespaces_confine_the_operator_and_its_rbac_to_them(
    dev_cluster: DevCluster, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    """The release watches only its own namespace: the operator, running with the chart
    ServiceAccount's token and peering as the chart configures it, reconciles there,
    and its identity may create nothing in any other namespace.

    CRDs come from the session (crds.enabled=false), as with a CRD-less install."""
    helm(
        dev_cluster,
        *("install", "ms", str(CHART), "--namespace", namespace),
        *("--set", "crds.enabled=false", "--set", f"watchNamespaces={{{namespace}}}"),
        # Other tests of this session name node paths: no cluster-wide node-path policy.
        *("--set", "storage.allowNodePaths=true"),
        *("--wait", "--timeout", "90s"),
    )
    deploy = json.loads(
        dev_cluster.kubectl("get", "deployment", "ms-modelsmith", "-n", namespace, "-o", "json")
    )
    assert deploy["status"]["readyReplicas"] == 1
    sa = f"system:serviceaccount:{namespace}:ms-modelsmith"

    def can(verb: str, resource: str, where: str = namespace) -> bool:
        out = dev_cluster.kubectl(
            "auth", "can-i", verb, resource, f"--as={sa}", "-n", where, check=False
        )
        return out.strip() == "yes"

    assert can("patch", "datapipelines.modelsmith.io/status")
    assert can("create", "jobs.batch")
    assert can("create", "roles.rbac.authorization.k8s.io")
    assert not can("escalate", "roles.rbac.authorization.k8s.io")
    assert can("watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can("get", "secrets")
    assert not can("delete", "datapipelines.modelsmith.io")
    for verb, resource in [("create", "jobs.batch"), ("list", "datapipelines.modelsmith.io")]:
        assert not can(verb, resource, where="default"), f"{verb} {resource} outside"

    kubeconfig = token_kubeconfig(dev_cluster, namespace, "ms-modelsmith", tmp_path / "sa.yaml")
    args = ("--namespace", namespace, "--metrics-port=0", "--peering=ms-modelsmith")
    with (
        bound_claims(namespace, sample_claim()),
        operator_process(kubeconfig, tmp_path / "operator.log", *args) as op,
    ):
        # The chart's identity looks the sample's claim up (persistentvolumeclaims get).
        dev_cluster.kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "datapipeline.yaml"))
        dev_cluster.kubectl(
            *("wait", "-n", namespace, "--for=condition=Succeeded", "--timeout=90s"),
            "datapipeline/tiny-corpus",
        )
        log = op.output()
    assert op.handled("DataPipeline", "tiny-corpus")
    assert "forbidden" not in log.lower(), log[-3000:]
    helm(dev_cluster, "uninstall", "ms", "--namespace", namespace, "--wait")


def _cluster_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]


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
    rules = _cluster_rules(_render(dev_cluster, "peering.enabled=false"))
    assert not any("kopf.dev" in r["apiGroups"] for r in rules)


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
    rules = _cluster_rules(_render(dev_cluster))
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


def test_watch_namespaces_bind_the_namespaced_role_only_there(dev_cluster: DevCluster) -> None:
    docs = _render(dev_cluster, "watchNamespaces={ml,research}")
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "research"]
    cluster_bindings = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert [b["roleRef"]["name"] for b in cluster_bindings] == ["ms-modelsmith-cluster"]
    cluster_scope = next(
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-cluster")
    )
    granted = {res for rule in cluster_scope["rules"] for res in rule["resources"]}
    assert granted == {"customresourcedefinitions", "tokenreviews", "namespaces"}


def test_the_node_path_policy_follows_allow_node_paths_and_watch_namespaces(
    dev_cluster: DevCluster,
) -> None:
    def policies(*sets: str) -> dict[str, dict[str, Any]]:
        docs = _render(dev_cluster, *sets)
        return {d["kind"]: d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")}

    default = policies()
    assert set(default) == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert "matchResources" not in default["ValidatingAdmissionPolicyBinding"]["spec"]
    confined = policies("watchNamespaces={ml,research}")["ValidatingAdmissionPolicyBinding"]
    [expression] = confined["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert expression["values"] == ["ml", "research"]
    assert policies("storage.allowNodePaths=true") == {}


def test_dev_install_values_put_the_operator_on_the_real_node(dev_cluster: DevCluster) -> None:
    """What `modelsmith dev install` passes to helm, rendered by the real chart."""
    from modelsmith.devcluster import imagecontext, images, install
    from modelsmith.devcluster.nodeconfig import LABEL, TAINT_KEY

    refs = [images.ImageRef(name, f"{i:016x}") for i, name in enumerate(imagecontext.IMAGES)]
    tag = images.release_tag(refs)
    assert re.fullmatch(r"dev-[0-9a-f]{12}", tag)
    assert tag == images.release_tag(reversed(refs)), "the order of the images is not part of it"
    assert tag != images.release_tag([*refs[:-1], images.ImageRef(refs[-1].name, "f" * 16)])

    flags = install.helm_values("localhost:5000/modelsmith/operator:abc", tag, ["demo"])
    out = helm(dev_cluster, "template", "ms", str(CHART), "--namespace", "ops", *flags).stdout
    deploy = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "localhost:5000/modelsmith/operator:abc"
    assert pod["nodeSelector"] == {LABEL: "true"}
    assert pod["tolerations"] == [{"key": TAINT_KEY, "operator": "Exists"}]
    assert "--namespace=demo" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["MODELSMITH_IMAGE_REGISTRY"], env["MODELSMITH_IMAGE_TAG"]) == (
        "localhost:5000/modelsmith",
        tag,
    )
    assert env["MODELSMITH_PROMETHEUS_URL"] == (
        "http://prometheus.modelsmith-dev.svc.cluster.local:9090"
    )


def test_the_canary_prometheus_is_named_only_when_given(dev_cluster: DevCluster) -> None:
    def env(*sets: str) -> dict[str, str | None]:
        deploy = next(d for d in _render(dev_cluster, *sets) if d["kind"] == "Deployment")
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert "MODELSMITH_PROMETHEUS_URL" not in env()  # the operator then says why it pauses
    url = "http://prometheus-operated.monitoring.svc:9090"
    assert env(f"canary.prometheusUrl={url}")["MODELSMITH_PROMETHEUS_URL"] == url
    argv = ["template", "ms", str(CHART), "--set", "canary.prometheusUrl=prometheus:9090"]
    proc = helm(dev_cluster, *argv, check=False)
    assert proc.returncode != 0
    assert "canary.prometheusUrl" in proc.stderr or "prometheusUrl" in proc.stderr, proc.stderr
