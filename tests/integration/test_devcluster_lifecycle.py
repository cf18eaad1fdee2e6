"""`modelsmith dev up/status/down` on a second, private cluster.

It runs beside the session's cluster on its own ports and home, so these tests can
stop it, break it and restart it without disturbing the other tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.components import Component, Ports
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.processes import is_alive, port_in_use

pytestmark = pytest.mark.integration


def _private_ports(session: DevCluster) -> Ports:
    """Next to the session cluster's ports, so concurrent runs with other bases don't meet."""
    return Ports.from_base(session.ports.etcd + 100)


@pytest.fixture
def private(tmp_path: Path, dev_cluster: DevCluster) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path / "dev", _private_ports(dev_cluster), timeout=90)
    yield cluster
    cluster.down(log=lambda _m: None, purge=True)


def _ports(cluster: DevCluster) -> list[int]:
    return list(cluster.ports.by_component().values())


def test_up_is_idempotent_and_down_leaves_nothing_behind(private: DevCluster) -> None:
    assert private.up(log=lambda _m: None) is True
    first = private.state.load()
    assert {p.name for p in first} == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "registry",
        "prometheus",
    }
    assert private.status().running

    assert private.up(log=lambda _m: None) is False, "a second up must reuse the cluster"
    assert [p.pid for p in private.state.load()] == [p.pid for p in first]

    stopped = private.down(log=lambda _m: None)
    assert sorted(stopped) == sorted(p.name for p in first)
    assert not any(is_alive(p) for p in first)
    assert not any(port_in_use(port) for port in _ports(private))
    assert private.status().components == []
    assert private.kubeconfig.exists(), "down keeps the cluster's state; only purge wipes"

    private.down(log=lambda _m: None, purge=True)
    assert not private.kubeconfig.exists()
    assert not (private.home / "etcd").exists()
    assert not (private.home / "pki").exists()


def _kwok_job(name: str, seconds: int) -> str:
    """A Job whose pod kwok runs for ``seconds`` and then completes."""
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": "kept"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"annotations": {"kwok.modelsmith.io/run-duration": f"{seconds}s"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"type": "kwok"},
                        "containers": [{"name": "main", "image": "example.invalid/run:1"}],
                    },
                },
            },
        }
    )


@pytest.mark.parametrize(
    "victims",
    [
        ("etcd",),
        ("kube-apiserver",),
        ("kube-controller-manager", "kube-scheduler", "kwok"),
    ],
    ids="+".join,
)
def test_a_crashed_component_comes_back_with_nothing_lost(
    private: DevCluster, victims: tuple[str, ...]
) -> None:
    """Killed mid-run (SIGKILL, as a crash), `up` restarts only what died: same etcd data,
    same CA (clients keep their kubeconfig), and the running Job still completes."""
    private.up(log=lambda _m: None)
    kubeconfig = private.kubeconfig.read_bytes()
    private.kubectl("create", "namespace", "kept")
    private.kubectl("create", "configmap", "precious", "-n", "kept", "--from-literal=a=1")
    uid = private.kubectl("get", "cm", "precious", "-n", "kept", "-o", "jsonpath={.metadata.uid}")
    private.kubectl("apply", "-f", "-", stdin=_kwok_job("run", 25))
    private.kubectl(
        "wait", "-n", "kept", "--for=jsonpath={.status.active}=1", "job/run", "--timeout=60s"
    )
    before = {p.name: p.pid for p in private.state.load()}
    for proc in private.state.load():
        if proc.name in victims:
            os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(is_alive(p) for p in private.state.load() if p.name in victims):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    messages: list[str] = []
    assert private.up(log=messages.append) is True
    assert any("partly running" in m for m in messages), messages
    after = {p.name: p.pid for p in private.state.load()}
    for name, pid in before.items():
        assert (after[name] != pid) == (name in victims), name
    assert private.kubeconfig.read_bytes() == kubeconfig
    assert (
        private.kubectl("get", "cm", "precious", "-n", "kept", "-o", "jsonpath={.metadata.uid}")
        == uid
    )
    private.kubectl("wait", "-n", "kept", "--for=condition=Complete", "job/run", "--timeout=90s")
    assert (
        private.kubectl("get", "job", "run", "-n", "kept", "-o", "jsonpath={.status.succeeded}")
        == "1"
    )


def test_down_then_up_is_the_same_cluster(private: DevCluster) -> None:
    private.up(log=lambda _m: None)
    private.kubectl("create", "namespace", "kept")
    private.down(log=lambda _m: None)
    assert private.up(log=lambda _m: None) is True
    assert "kept" in private.kubectl("get", "namespaces", "-o", "name")


def test_taken_port_fails_up_before_anything_starts(private: DevCluster) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", private.ports.etcd))
        sock.listen()
        with pytest.raises(DevClusterError, match=rf"{private.ports.etcd} \(etcd\)"):
            private.up(log=lambda _m: None)
    assert private.state.load() == []


class _ApiServerWithoutEtcd(DevCluster):
    """Points the API server at a closed port, so it never becomes ready."""

    def _components(self) -> list[Component]:
        found = super()._components()
        for component in found:
            component.argv[:] = [
                "--etcd-servers=http://127.0.0.1:1" if a.startswith("--etcd-servers=") else a
                for a in component.argv
            ]
        return found


def test_unhealthy_api_server_times_out_with_a_clear_error(
    tmp_path: Path, dev_cluster: DevCluster
) -> None:
    broken = _ApiServerWithoutEtcd(tmp_path / "dev", _private_ports(dev_cluster), timeout=5)
    try:
        with pytest.raises(DevClusterError, match="timed out after 5s waiting for kube-apiserver"):
            broken.up(log=lambda _m: None)
    finally:
        broken.down(log=lambda _m: None, purge=True)
    assert broken.state.load() == []
    assert not any(port_in_use(port) for port in _ports(broken))


def test_up_restarts_a_cluster_started_with_other_flags(
    tmp_path: Path, dev_cluster: DevCluster
) -> None:
    home, ports = tmp_path / "dev", _private_ports(dev_cluster)
    old = _VerboseScheduler(home, ports, timeout=90)
    try:
        old.up(log=lambda _m: None)
        messages: list[str] = []
        current = DevCluster(home, ports, timeout=90)
        assert current.up(log=messages.append) is True
        assert any(
            "restarting kube-scheduler" in m and "other binaries or flags" in m for m in messages
        ), messages
        scheduler = next(p for p in current.state.load() if p.name == "kube-scheduler")
        assert "--v=4" not in scheduler.argv
    finally:
        DevCluster(home, ports).down(log=lambda _m: None, purge=True)


class _VerboseScheduler(DevCluster):
    """An older checkout's cluster: same binaries, one flag different."""

    def _components(self) -> list[Component]:
        found = super()._components()
        for component in found:
            if component.name == "kube-scheduler":
                component.argv.append("--v=4")
        return found
