"""Smoke tests that only a real control plane can pass.

Each one exercises a piece of Kubernetes that a fake API would have to re-implement:
version reporting, CRD structural validation and CEL, the status subresource, the
scheduler's extended-resource accounting, the Job controller, the garbage collector
and RBAC.
"""

from __future__ import annotations

import json

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelsmith.devcluster import tools
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.nodes import GPU_PRODUCT, GPU_RESOURCE
from tests.helpers import kubectl_apply, wait_for

pytestmark = pytest.mark.integration


def test_kubectl_reports_the_real_server_version(dev_cluster: DevCluster) -> None:
    out = json.loads(dev_cluster.kubectl("version", "-o", "json"))
    assert out["serverVersion"]["gitVersion"] == tools.KUBERNETES_VERSION
    assert out["clientVersion"]["gitVersion"] == tools.KUBERNETES_VERSION
    assert client.VersionApi().get_code().git_version == tools.KUBERNETES_VERSION


def test_etcd_is_the_pinned_release(dev_cluster: DevCluster) -> None:
    version = httpx.get(f"http://127.0.0.1:{dev_cluster.ports.etcd}/version", timeout=5).json()
    assert version["etcdserver"] == tools.ETCD_VERSION.lstrip("v")


def test_fake_nodes_look_like_a_gpu_pool(core: client.CoreV1Api) -> None:
    nodes = {n.metadata.name: n for n in core.list_node().items}
    gpu = [n for n in nodes.values() if GPU_RESOURCE in (n.status.allocatable or {})]
    cpu = [n for n in nodes.values() if GPU_RESOURCE not in (n.status.allocatable or {})]
    assert len(gpu) >= 2
    assert len(cpu) >= 1
    for node in gpu:
        assert node.status.allocatable[GPU_RESOURCE] == "8"
        assert node.metadata.labels["nvidia.com/gpu.product"] == GPU_PRODUCT
        assert any(t.key == GPU_RESOURCE for t in node.spec.taints or [])
    for node in nodes.values():
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name


def test_fake_nodes_renew_their_leases(dev_cluster: DevCluster, core: client.CoreV1Api) -> None:
    """Leases keep the fake nodes Ready: without them a node's only heartbeat came every
    60-130 s, past the node-lifecycle controller's 50 s grace period, and nodes flapped
    NotReady (unready pods, not-ready taints refusing new pods) in the middle of tests."""
    nodes = {n.metadata.name for n in core.list_node().items}
    leases = client.CoordinationV1Api().list_namespaced_lease("kube-node-lease").items
    assert {lease.metadata.name for lease in leases} == nodes
    before = {lease.metadata.name: lease.spec.renew_time for lease in leases}

    def renewed() -> bool:
        now = client.CoordinationV1Api().list_namespaced_lease("kube-node-lease").items
        return all(lease.spec.renew_time > before[lease.metadata.name] for lease in now)

    wait_for(renewed, timeout=40, interval=1, what="every node lease to be renewed")
    for node in core.list_node().items:
        assert not [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]


def _pipeline(name: str, **spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sources": [{"uri": "/data/raw.jsonl", "format": "jsonl"}],
        "output": {"uri": "/data/shards"},
    }
    return {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": name},
        "spec": base | spec,
    }


def test_server_rejects_a_cr_that_violates_the_schema(
    dev_cluster: DevCluster, crds: list[str], namespace: str
) -> None:
    bad = kubectl_apply(dev_cluster, namespace, _pipeline("bad", workers=0))
    assert bad.returncode != 0
    assert "spec.workers" in bad.stderr
    assert "should be greater than or equal to 1" in bad.stderr

    wrong_enum = kubectl_apply(
        dev_cluster,
        namespace,
        _pipeline("bad2", sources=[{"uri": "/x", "format": "csv"}]),
    )
    assert wrong_enum.returncode != 0
    assert "spec.sources[0].format" in wrong_enum.stderr

    good = kubectl_apply(dev_cluster, namespace, _pipeline("good"))
    assert good.returncode == 0, good.stderr
    stored = json.loads(dev_cluster.kubectl("get", "dp", "good", "-n", namespace, "-o", "json"))
    assert stored["spec"]["workers"] == 1, "the schema's default was not applied"


def test_cel_rule_keeps_the_output_immutable(
    dev_cluster: DevCluster, crds: list[str], namespace: str
) -> None:
    assert kubectl_apply(dev_cluster, namespace, _pipeline("p")).returncode == 0
    moved = kubectl_apply(dev_cluster, namespace, _pipeline("p", output={"uri": "/elsewhere"}))
    assert moved.returncode != 0
    assert "output is immutable" in moved.stderr


def test_status_subresource_ignores_status_on_the_main_resource(
    dev_cluster: DevCluster, crds: list[str], namespace: str
) -> None:
    api = client.CustomObjectsApi()
    args = ("modelsmith.io", "v1alpha1", namespace, "datapipelines")
    body = _pipeline("s") | {"status": {"phase": "Succeeded"}}
    api.create_namespaced_custom_object(*args, body)
    assert "status" not in api.get_namespaced_custom_object(*args, "s")

    api.patch_namespaced_custom_object_status(*args, "s", {"status": {"phase": "Running"}})
    assert api.get_namespaced_custom_object(*args, "s")["status"]["phase"] == "Running"

    api.patch_namespaced_custom_object(
        *args, "s", {"spec": {"workers": 3}, "status": {"phase": "Failed"}}
    )
    obj = api.get_namespaced_custom_object(*args, "s")
    assert obj["spec"]["workers"] == 3
    assert obj["status"]["phase"] == "Running"


def _gpu_job(name: str, gpus: int) -> client.V1Job:
    container = client.V1Container(
        name="train",
        image="ghcr.io/modelsmith/trainer:test",
        resources=client.V1ResourceRequirements(
            requests={GPU_RESOURCE: str(gpus)}, limits={GPU_RESOURCE: str(gpus)}
        ),
    )
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(restart_policy="Never", containers=[container])
            ),
        ),
    )


def test_gpu_job_is_scheduled_on_a_gpu_node_and_completes(
    core: client.CoreV1Api, namespace: str
) -> None:
    batch = client.BatchV1Api()
    batch.create_namespaced_job(namespace, _gpu_job("gpu", 8))

    def completed() -> bool:
        job = batch.read_namespaced_job_status("gpu", namespace)
        return any(c.type == "Complete" and c.status == "True" for c in job.status.conditions or [])

    wait_for(completed, timeout=60, what="the GPU job to complete")
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=gpu").items
    assert len(pods) == 1
    node = core.read_node(pods[0].spec.node_name)
    assert node.status.allocatable[GPU_RESOURCE] == "8"
    assert pods[0].status.phase == "Succeeded"
    # ExtendedResourceToleration admission let the pod past the GPU taint.
    assert any(t.key == GPU_RESOURCE for t in pods[0].spec.tolerations)


def test_job_asking_for_more_gpus_than_a_node_has_stays_pending(
    core: client.CoreV1Api, namespace: str
) -> None:
    client.BatchV1Api().create_namespaced_job(namespace, _gpu_job("huge", 9))

    def unschedulable() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=huge").items
        return bool(pods) and any(
            c.type == "PodScheduled" and c.reason == "Unschedulable"
            for c in pods[0].status.conditions or []
        )

    wait_for(unschedulable, timeout=60, what="the scheduler to refuse 9 GPUs")


def test_deleting_a_job_garbage_collects_its_pods(core: client.CoreV1Api, namespace: str) -> None:
    batch = client.BatchV1Api()
    job = _gpu_job("gc", 1)
    job.spec.template.metadata = client.V1ObjectMeta(
        annotations={"kwok.modelsmith.io/run-duration": "10m"}
    )
    batch.create_namespaced_job(namespace, job)
    wait_for(
        lambda: core.list_namespaced_pod(namespace, label_selector="job-name=gc").items,
        what="the job's pod",
    )
    batch.delete_namespaced_job("gc", namespace, propagation_policy="Background")
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="job-name=gc").items,
        timeout=60,
        what="the garbage collector to delete the pod",
    )


def test_rbac_refuses_what_the_role_does_not_allow(core: client.CoreV1Api, namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api()
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="reader"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
            ],
        ),
    )
    token = core.create_namespaced_service_account_token(
        "reader",
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token

    admin = client.Configuration.get_default_copy()
    restricted = client.Configuration()
    restricted.host = admin.host
    restricted.ssl_ca_cert = admin.ssl_ca_cert
    restricted.api_key = {"BearerToken": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(restricted))

    assert as_reader.list_namespaced_pod(namespace).items == []
    with pytest.raises(ApiException) as refused:
        as_reader.list_namespaced_secret(namespace)
    assert refused.value.status == 403
    with pytest.raises(ApiException) as refused_create:
        as_reader.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))
        )
    assert refused_create.value.status == 403
    with pytest.raises(ApiException) as other_ns:
        as_reader.list_namespaced_pod("default")
    assert other_ns.value.status == 403


@pytest.mark.parametrize(("exit_code", "phase"), [("0", "Succeeded"), ("3", "Failed")])
def test_fake_kubelet_reports_exit_code_and_termination_message(
    core: client.CoreV1Api, namespace: str, exit_code: str, phase: str
) -> None:
    """What the operator reads from real workloads, kwok can play back on demand."""
    job = _gpu_job("result", 1)
    job.spec.template.metadata = client.V1ObjectMeta(
        annotations={
            "kwok.modelsmith.io/exit-code": exit_code,
            "kwok.modelsmith.io/termination-message": '{"loss": 2.5}',
        }
    )
    client.BatchV1Api().create_namespaced_job(namespace, job)

    def finished() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=result").items
        return next((p for p in pods if p.status.phase in ("Succeeded", "Failed")), None)

    pod = wait_for(finished, timeout=60, what="the pod to finish")
    assert pod.status.phase == phase
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == int(exit_code)
    assert json.loads(terminated.message) == {"loss": 2.5}
