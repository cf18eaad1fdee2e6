"""The dev cluster's storage, as a user's pods meet it: a claim that binds by itself
(the provisioner behind the default StorageClass) and an S3 store reached by name."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from modelsmith.devcluster import nodestorage
from modelsmith.devcluster.cluster import DevCluster
from tests.e2e.conftest import pod_on_node, wait_phase
from tests.helpers import wait_for
from tests.integration.claims import claim
from tests.workloads.s3 import S3

pytestmark = pytest.mark.integration

WRITE = "import os; open('/data/hello', 'w').write('from a pod'); print(os.getuid())"


def _mounting(name: str, image: str, claim_name: str, args: list[str]) -> dict[str, Any]:
    return pod_on_node(
        name,
        image,
        args,
        command=["python3"],
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
    )


def test_a_bare_claim_binds_on_first_use_and_its_directory_goes_with_it(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, pushed: dict[str, str]
) -> None:
    core.create_namespaced_persistent_volume_claim(namespace, claim("scratch", "ReadWriteOnce"))
    pvc = core.read_namespaced_persistent_volume_claim("scratch", namespace)
    assert pvc.spec.storage_class_name == nodestorage.STORAGE_CLASS  # the default class
    assert pvc.status.phase == "Pending"  # WaitForFirstConsumer: no pod yet, no volume

    core.create_namespaced_pod(
        namespace, _mounting("writer", pushed["python-base"], "scratch", ["-c", WRITE])
    )
    done = wait_phase(core, namespace, "writer", {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded", core.read_namespaced_pod_log("writer", namespace)

    pvc = core.read_namespaced_persistent_volume_claim("scratch", namespace)
    assert pvc.status.phase == "Bound"
    volume = core.read_persistent_volume(pvc.spec.volume_name)
    assert volume.spec.storage_class_name == nodestorage.STORAGE_CLASS
    assert volume.spec.persistent_volume_reclaim_policy == "Delete"
    (term,) = volume.spec.node_affinity.required.node_selector_terms
    assert term.match_expressions[0].values == ["modelsmith-node"]
    directory = Path(volume.spec.host_path.path)
    assert directory.parent == nodestorage.volumes_root(dev_cluster.home)
    assert (directory / "hello").read_text() == "from a pod"
    assert (directory / "hello").stat().st_uid == 10001
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777

    core.delete_namespaced_pod("writer", namespace, grace_period_seconds=0)
    wait_for(
        lambda: (
            not core.list_namespaced_pod(namespace, field_selector="metadata.name=writer").items
        ),
        timeout=60,
        what="the writer pod to go",
    )
    core.delete_namespaced_persistent_volume_claim("scratch", namespace)

    def volume_gone() -> bool:
        names = {v.metadata.name for v in core.list_persistent_volume().items}
        return volume.metadata.name not in names and not directory.exists()

    wait_for(volume_gone, timeout=60, what="the provisioner to delete the volume and its directory")


def test_a_claim_the_provisioner_cannot_serve_says_why(
    core: client.CoreV1Api, namespace: str, pushed: dict[str, str]
) -> None:
    core.create_namespaced_persistent_volume_claim(namespace, claim("shared", "ReadOnlyMany"))
    core.create_namespaced_pod(
        namespace, _mounting("reader", pushed["python-base"], "shared", ["-c", "1"])
    )

    def failure() -> str | None:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=shared,reason=ProvisioningFailed"
        ).items
        return events[0].message if events else None

    message = wait_for(failure, timeout=60, what="a ProvisioningFailed event on the claim")
    assert "ReadOnlyMany" in message
    assert (
        core.read_namespaced_persistent_volume_claim("shared", namespace).status.phase == "Pending"
    )


def test_pods_reach_the_object_store_by_its_service_name(
    core: client.CoreV1Api, namespace: str, pushed: dict[str, str], dev_s3: S3
) -> None:
    """A pod with only the Secret's variables lists and reads what the host put there."""
    dev_s3.put("greeting.txt", b"hello from the host")
    script = (
        "import os, s3fs\n"
        "fs = s3fs.S3FileSystem(endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n"
        f"print(fs.cat('{dev_s3.bucket}/greeting.txt').decode())\n"
        f"fs.pipe('{dev_s3.bucket}/reply.txt', b'hello from a pod')\n"
    )
    pod = pod_on_node(
        "s3-client",
        pushed["data"],
        ["-c", script],
        command=["python3"],
        container={"envFrom": [{"secretRef": {"name": "s3"}}]},
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_phase(core, namespace, "s3-client", {"Succeeded", "Failed"})
    logs = core.read_namespaced_pod_log("s3-client", namespace)
    assert done.status.phase == "Succeeded", logs
    assert "hello from the host" in logs
    assert dev_s3.get("reply.txt") == b"hello from a pod"
