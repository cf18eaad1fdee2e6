"""Storage the real node's pods use as a user's cluster gives it to them.

Two things, both started with the node and kept across `down` (only `down --purge`
wipes them):

- A dynamic PVC provisioner (gomod/provisioner: sig-storage-lib-external-provisioner,
  the library behind local-path and nfs-subdir provisioners) behind the default
  StorageClass `modelsmith-local`. Binding waits for the first consumer, so a claim's
  directory is made for the node its pod was scheduled to and the PV carries that
  node's affinity: a user's `kubectl apply` of a bare PVC binds, as on any cluster.
- An S3-compatible object store (versitygw's posix backend: every bucket a directory,
  every object a plain file), in the node's network namespace on the node's address,
  behind the Service `objectstore.modelsmith-dev`. Pods reach it by DNS name through
  kube-proxy; the host reaches it at the node's address.

The manifests are pure functions; the credentials are made once per cluster home.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx

from modelsmith.devcluster import nodenet, tools
from modelsmith.devcluster.components import NODE_IP, Ports
from modelsmith.devcluster.processes import NodeProcess

STORAGE_CLASS = "modelsmith-local"
PROVISIONER_NAME = "modelsmith.io/local-path"
PROVISIONER_USER = "modelsmith:provisioner"
DEV_NAMESPACE = "modelsmith-dev"
OBJECT_STORE_SERVICE = "objectstore"
OBJECT_STORE_PORT = 9000
OBJECT_STORE_REGION = "us-east-1"
MANAGED_BY = "modelsmith-dev"
PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_PORT = 9090
"""Where the dev Prometheus answers in the node (a socat bridge to the host's loopback):
the operator pod's canary analyses query it by the Service's name."""


def volumes_root(cluster_home: Path) -> Path:
    return cluster_home / "volumes"


def objects_root(cluster_home: Path) -> Path:
    return cluster_home / "objects"


def host_endpoint() -> str:
    """The object store as the host reaches it (the node's address, routed by the veth)."""
    return f"http://{NODE_IP}:{OBJECT_STORE_PORT}"


def prometheus_pod_url() -> str:
    """The dev Prometheus as pods reach it (the chart's canary.prometheusUrl)."""
    return f"http://{PROMETHEUS_SERVICE}.{DEV_NAMESPACE}.svc.cluster.local:{PROMETHEUS_PORT}"


def pod_endpoint() -> str:
    """The object store as pods reach it: the Service's DNS name."""
    return f"http://{OBJECT_STORE_SERVICE}.{DEV_NAMESPACE}.svc.cluster.local:{OBJECT_STORE_PORT}"


def credentials_path(cluster_home: Path) -> Path:
    return cluster_home / "objectstore-credentials.json"


def credentials(cluster_home: Path) -> tuple[str, str]:
    """The object store's one key pair, made on first use and kept with the cluster."""
    path = credentials_path(cluster_home)
    if path.is_file():
        saved = json.loads(path.read_text())
        return str(saved["access"]), str(saved["secret"])
    access, secret = "modelsmith", secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"access": access, "secret": secret}))
    tmp.chmod(0o600)
    tmp.replace(path)
    return access, secret


def s3_env(cluster_home: Path, endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point a client at the dev object store: what a
    Secret named by `spec.storage.secretRef` holds."""
    access, secret = credentials(cluster_home)
    return {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": OBJECT_STORE_REGION,
    }


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": MANAGED_BY}


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "labels": _labels(),
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER_NAME,
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    }


def provisioner_rbac() -> list[dict[str, Any]]:
    """What an external provisioner needs, as local-path-provisioner's chart grants it."""
    rules = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["persistentvolumes"],
            "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["persistentvolumeclaims"],
            "verbs": ["get", "list", "watch", "update", "patch"],
        },
        {
            "apiGroups": ["storage.k8s.io"],
            "resources": ["storageclasses"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    rbac = "rbac.authorization.k8s.io"
    return [
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": PROVISIONER_USER, "labels": _labels()},
            "rules": rules,
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": PROVISIONER_USER, "labels": _labels()},
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": PROVISIONER_USER},
            "subjects": [{"apiGroup": rbac, "kind": "User", "name": PROVISIONER_USER}],
        },
    ]


def node_service(name: str, port_name: str, port: int) -> list[dict[str, Any]]:
    """A Service without a selector and the EndpointSlice behind it, for a process of
    the node (not a pod) on ``port`` of its address, as an external database is to a
    user's cluster."""
    meta = {"namespace": DEV_NAMESPACE, "labels": _labels()}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, **meta},
            "spec": {"ports": [{"name": port_name, "port": port, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-node",
                "namespace": DEV_NAMESPACE,
                "labels": {
                    **_labels(),
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        },
    ]


def manifests() -> list[dict[str, Any]]:
    """The storage class, its provisioner's RBAC, and the object store and Prometheus
    as Services of the dev namespace."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": DEV_NAMESPACE, "labels": _labels()},
    }
    return [
        storage_class(),
        *provisioner_rbac(),
        namespace,
        *node_service(OBJECT_STORE_SERVICE, "s3", OBJECT_STORE_PORT),
        *node_service(PROMETHEUS_SERVICE, "http", PROMETHEUS_PORT),
    ]


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def processes(cluster_home: Path, ports: Ports, kubeconfig: Path) -> list[NodeProcess]:
    """The object store (in the node's namespace, on its address) and the provisioner
    (on the host, next to the API server it watches), in start order."""
    store = str(tools.binary(tools.OBJECT_STORE, "versitygw"))
    provisioner = str(tools.binary(tools.PROVISIONER, "provisioner"))
    access, secret = credentials(cluster_home)
    objects = objects_root(cluster_home)
    volumes = volumes_root(cluster_home)
    objects.mkdir(parents=True, exist_ok=True)
    volumes.mkdir(parents=True, exist_ok=True)
    health = f"127.0.0.1:{ports.provisioner}"
    return [
        NodeProcess(
            "objectstore",
            nodenet.nsenter(
                [
                    store,
                    f"--port={NODE_IP}:{OBJECT_STORE_PORT}",
                    f"--region={OBJECT_STORE_REGION}",
                    "--health=/health",
                    "--quiet",
                    "posix",
                    str(objects),
                ]
            ),
            store,
            lambda: _http_ok(f"{host_endpoint()}/health"),
            env={"ROOT_ACCESS_KEY_ID": access, "ROOT_SECRET_ACCESS_KEY": secret},
        ),
        NodeProcess(
            "provisioner",
            [
                provisioner,
                f"--kubeconfig={kubeconfig}",
                f"--root={volumes}",
                f"--name={PROVISIONER_NAME}",
                f"--health-addr={health}",
            ],
            provisioner,
            lambda: _http_ok(f"http://{health}/healthz"),
        ),
    ]
