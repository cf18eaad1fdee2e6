"""The dev cluster's storage add-ons, as data: what the API gets and what pods are told."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from modelsmith.builders.storage import OPTIONAL_KEYS, REQUIRED_KEYS
from modelsmith.devcluster import nodestorage
from modelsmith.devcluster.components import NODE_IP, Ports


def test_the_storage_class_is_the_default_and_binds_where_the_pod_lands() -> None:
    sc = nodestorage.storage_class()
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["provisioner"] == nodestorage.PROVISIONER_NAME
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["reclaimPolicy"] == "Delete"


@pytest.mark.parametrize(
    ("name", "pod_url"),
    [
        ("objectstore", "http://objectstore.modelsmith-dev.svc.cluster.local:9000"),
        ("prometheus", "http://prometheus.modelsmith-dev.svc.cluster.local:9090"),
    ],
)
def test_the_node_services_lead_to_the_node_address(name: str, pod_url: str) -> None:
    docs = nodestorage.manifests()
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    (endpoints,) = [
        d
        for d in docs
        if d["kind"] == "EndpointSlice"
        and d["metadata"]["labels"]["kubernetes.io/service-name"] == name
    ]
    assert namespace["metadata"]["name"] == service["metadata"]["namespace"]
    assert service["metadata"]["namespace"] == nodestorage.DEV_NAMESPACE
    assert "selector" not in service["spec"]  # no pod behind it: the slice says where
    assert endpoints["endpoints"][0]["addresses"] == [NODE_IP]
    assert endpoints["ports"][0]["port"] == service["spec"]["ports"][0]["port"]
    urls = {
        "objectstore": nodestorage.pod_endpoint(),
        "prometheus": nodestorage.prometheus_pod_url(),
    }
    assert urls[name] == pod_url
    # Namespace first: `kubectl apply` of the list creates it before what lives in it.
    assert docs.index(namespace) < docs.index(service)


def test_the_provisioner_is_bound_to_its_own_user() -> None:
    role, binding = nodestorage.provisioner_rbac()
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == nodestorage.PROVISIONER_USER
    verbs = {r["resources"][0]: set(r["verbs"]) for r in role["rules"]}
    assert {"create", "delete"} <= verbs["persistentvolumes"]
    assert "delete" not in verbs["persistentvolumeclaims"]


def test_credentials_are_made_once_and_readable_only_by_their_owner(tmp_path: Path) -> None:
    first = nodestorage.credentials(tmp_path)
    assert nodestorage.credentials(tmp_path) == first
    mode = nodestorage.credentials_path(tmp_path).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    env = nodestorage.s3_env(tmp_path, nodestorage.pod_endpoint())
    # Exactly what the operator's builders accept in a storage Secret.
    assert set(REQUIRED_KEYS) <= set(env)
    assert set(env) <= set(REQUIRED_KEYS) | set(OPTIONAL_KEYS)
    assert env["AWS_SECRET_ACCESS_KEY"] == first[1]


def test_the_provisioner_health_port_has_its_own_slot() -> None:
    ports = Ports.from_base(20000)
    taken = list(ports.by_component().values())
    assert ports.provisioner == 20008
    assert len(taken) == len(set(taken))
