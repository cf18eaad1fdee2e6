"""The e2e tier: real pods on the dev cluster's real node, images from its registry.

The session's dev cluster (the integration tier's fixture) must have its real node
Ready: these tests fail, never skip, when it is not, because on a machine of this
project's kind it can always start (`up` says why when it cannot).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client

from modelsmith import crdgen
from modelsmith.api import KINDS
from modelsmith.devcluster import imagebase, images, install, nodestorage
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.nodeconfig import LABEL, NODE_NAME, REGISTRY_IN_NODE, TAINT_KEY
from tests.integration.conftest import (  # noqa: F401 (fixtures shared with integration)
    core,
    crds,
    dev_cluster,
    kubeconfig,
    namespace,
)
from tests.integration.test_chart import CHART, helm
from tests.workloads.s3 import S3

pytestmark = pytest.mark.integration

ON_REAL_NODE: dict[str, Any] = {
    "nodeSelector": {LABEL: "true"},
    "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="session")
def real_node(dev_cluster: DevCluster) -> str:  # noqa: F811
    out = dev_cluster.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
    assert out, (
        f"the dev cluster has no real node {NODE_NAME}: `modelsmith dev up` says why "
        "(MODELSMITH_DEV_REAL_NODE=require makes that an error)"
    )
    ready = [c for c in json.loads(out)["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    return NODE_NAME


class Pushed(dict[str, str]):
    """Images built from this checkout and pushed to the dev registry, on first use:
    name -> the reference pods use (the registry as the node reaches it)."""

    def __init__(self, registry: str) -> None:
        super().__init__()
        self.registry = registry

    def __missing__(self, name: str) -> str:
        if name == "python-base":
            ref = images.ImageRef(name, imagebase.ensure_base().rsplit(":", 1)[1])
        else:
            ref = images.build([name])[name]
        images.push(ref, self.registry)
        self[name] = f"{REGISTRY_IN_NODE}/modelsmith/{ref.name}:{ref.tag}"
        return self[name]


@pytest.fixture(scope="session")
def pushed(dev_cluster: DevCluster, real_node: str) -> Pushed:  # noqa: F811
    return Pushed(f"127.0.0.1:{dev_cluster.ports.registry}")


def pod_on_node(
    name: str, image: str, args: list[str], *, command: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "securityContext": RESTRICTED,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
    }
    if command:
        container["command"] = command
    container.update(extra.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            **ON_REAL_NODE,
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "containers": [container],
            **extra,
        },
    }


def wait_phase(
    api: client.CoreV1Api, ns: str, name: str, phases: set[str], timeout: float = 180
) -> client.V1Pod:
    deadline = time.monotonic() + timeout
    pod = api.read_namespaced_pod(name, ns)
    while time.monotonic() < deadline:
        pod = api.read_namespaced_pod(name, ns)
        if pod.status.phase in phases:
            return pod
        time.sleep(0.5)
    events = api.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    raise AssertionError(
        f"pod {name} is {pod.status.phase}, not {phases}: "
        + "; ".join(f"{e.reason}: {e.message}" for e in events.items)
    )


@pytest.fixture
def unique() -> Iterator[str]:
    yield f"p-{uuid.uuid4().hex[:6]}"


@contextmanager
def chart_on_real_node(
    dev_cluster: DevCluster,  # noqa: F811
    operator_image: str,
    release: str,
    workload_tag: str | None = None,
) -> Iterator[str]:
    """`helm install` of the chart into a namespace of its own, the operator pod placed
    on the real node, watching only that namespace (so it never competes with the other
    tests' operators); yields the namespace, uninstalls afterwards."""
    ns = f"{release}-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", ns)
    helm(
        dev_cluster,
        *("install", release, str(CHART), "--namespace", ns),
        *install.helm_values(operator_image, workload_tag, watch=[ns]),
        *("--set", "storage.allowNodePaths=true"),  # other tests of the session name paths
        *("--take-ownership", "--force-conflicts", "--wait", "--timeout", "240s"),
    )
    try:
        yield ns
    finally:
        helm(dev_cluster, "uninstall", release, "--namespace", ns, "--wait", check=False)
        for info in KINDS:  # later tests expect the CRDs exactly as the models generate them
            dev_cluster.kubectl(
                "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crdgen.render(info)
            )
        dev_cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture
def dev_s3(dev_cluster: DevCluster, real_node: str, namespace: str) -> S3:  # noqa: F811
    return bucket_with_secret(dev_cluster, namespace)


def bucket_with_secret(dev_cluster: DevCluster, namespace: str) -> S3:  # noqa: F811
    """A fresh bucket in the dev cluster's object store, and a Secret `s3` in
    ``namespace`` with the AWS variables a pod needs to reach it by the Service's name."""
    env = nodestorage.s3_env(dev_cluster.home, nodestorage.host_endpoint())
    s3 = S3(nodestorage.host_endpoint(), f"e2e-{uuid.uuid4().hex[:8]}", env)
    s3.client().create_bucket(Bucket=s3.bucket)
    pod_env = nodestorage.s3_env(dev_cluster.home, nodestorage.pod_endpoint())
    client.CoreV1Api().create_namespaced_secret(
        namespace,
        {"metadata": {"name": "s3"}, "type": "Opaque", "stringData": pod_env},
    )
    return s3
