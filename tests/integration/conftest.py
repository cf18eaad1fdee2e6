"""The integration tier runs against the real local control plane.

The cluster is brought up once per test session (or reused if a developer already has
one running, which the session then leaves running) and each test gets a namespace of
its own, deleted afterwards, so tests cannot see each other's objects.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kopf.testing import KopfRunner
from kubernetes import client, config

from modelsmith import crdgen
from modelsmith.api import KINDS
from modelsmith.devcluster.cluster import DevCluster
from tests.helpers import free_port

pytestmark = pytest.mark.integration


# Every in-process operator of this session serves progress reports here (the handlers
# are registered once per process, at the first import of modelsmith.kopf_entry).
_STATUS_PORT = free_port()
os.environ.setdefault("MODELSMITH_STATUS_PORT", str(_STATUS_PORT))
os.environ.setdefault("MODELSMITH_STATUS_HOST", "127.0.0.1")
os.environ.setdefault("MODELSMITH_STATUS_URL", f"http://127.0.0.1:{_STATUS_PORT}")
# kwok's nodes run nothing, so most tests name plain paths; that is the documented dev
# and test setting. tests/integration/test_storage.py runs operators without it.
os.environ.setdefault("MODELSMITH_ALLOW_NODE_PATHS", "true")


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[DevCluster]:
    cluster = DevCluster.from_env()
    started = cluster.up()
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    config.load_kube_config(config_file=str(cluster.kubeconfig))
    yield cluster
    if started and not os.environ.get("MODELSMITH_KEEP_CLUSTER"):
        cluster.down()


@pytest.fixture(scope="session")
def crds(dev_cluster: DevCluster) -> list[str]:
    """Our CRDs, installed from the models (as `kubectl apply -f crds/` would) and Established."""
    # A chart installed earlier in the session (the e2e tier's) leaves its CRDs behind
    # (crds.keep) with helm as the manager of their fields: the models are the truth
    # here, so this apply takes those fields back instead of failing on the conflict.
    apply = ("apply", "--server-side", "--force-conflicts", "-f", "-")
    for info in KINDS:
        dev_cluster.kubectl(*apply, stdin=crdgen.render(info))
    for kind in crdgen.PEERING_KINDS:  # replicas of the operator peer through these
        dev_cluster.kubectl(*apply, stdin=crdgen.render_peering(kind))
    names = [info.crd_name for info in KINDS]
    dev_cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", *[f"crd/{n}" for n in names]
    )
    return names


@pytest.fixture(scope="session")
def kubeconfig(dev_cluster: DevCluster) -> Path:
    return dev_cluster.kubeconfig


@pytest.fixture
def core(dev_cluster: DevCluster) -> client.CoreV1Api:
    return client.CoreV1Api()


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def operator(crds: list[str], namespace: str) -> Iterator[KopfRunner]:
    """The operator, in-process, watching only this test's namespace."""
    kopf_args = ["run", "--standalone", "--namespace", namespace, "-m", "modelsmith.kopf_entry"]
    with KopfRunner(kopf_args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
