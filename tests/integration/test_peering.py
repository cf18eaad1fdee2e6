"""Replicas of the operator, peered through kopf: one acts, the other stands by and
takes over when the first goes away (what the chart's `replicas` relies on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from modelsmith.devcluster.cluster import DevCluster
from tests.helpers import wait_for
from tests.integration.operator_process import OperatorProcess, operator_process

pytestmark = pytest.mark.integration

GROUP = ("modelsmith.io", "v1alpha1")
RESUMED = "Resuming operations after the pause"


def _pipeline(namespace: str, name: str) -> None:
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "DataPipeline",
        "metadata": {"name": name},
        "spec": {
            "sources": [{"uri": "/data/raw", "format": "text"}],
            "output": {"uri": f"/data/{name}"},
        },
    }
    client.CustomObjectsApi().create_namespaced_custom_object(
        *GROUP, namespace, "datapipelines", body
    )


def _phase(namespace: str, name: str) -> str | None:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        *GROUP, namespace, "datapipelines", name
    )
    phase: str | None = (obj.get("status") or {}).get("phase")
    return phase


def _peers(namespace: str) -> dict[str, Any]:
    """Who is in the peering object, by identity (none until an operator has made it)."""
    try:
        obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", "modelsmith"
        )
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    peers: dict[str, Any] = obj.get("status") or {}
    return peers


def test_only_the_highest_priority_replica_acts_and_the_other_takes_over(
    dev_cluster: DevCluster, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    args = ("--namespace", namespace, "--metrics-port=0", "--peering=modelsmith")
    # a acts first, then b joins: the case of a replica added to a running operator.
    # (Replicas started in the same instant can both act for a moment: b, seeing no
    # peer yet, resumes, and in one run still handled an object a second after it
    # paused. kopf's peering settles, it does not lock.)
    with operator_process(dev_cluster.kubeconfig, tmp_path / "a.log", *args, "--priority=200") as a:
        # kopf starts every peered replica paused; one alone in the peering resumes.
        wait_for(lambda: RESUMED in a.output(), timeout=60, what="a to start acting")
        b_process = operator_process(
            dev_cluster.kubeconfig, tmp_path / "b.log", *args, "--priority=100"
        )
        with b_process as b:
            _only_a_acts_and_b_takes_over(namespace, a, b)


def _only_a_acts_and_b_takes_over(namespace: str, a: OperatorProcess, b: OperatorProcess) -> None:
    # The operator made its own peering object; both replicas registered in it.
    peers = wait_for(lambda: len(_peers(namespace)) == 2 and _peers(namespace), timeout=60)
    assert sorted(p["priority"] for p in peers.values()) == [100, 200]

    _pipeline(namespace, "first")
    wait_for(lambda: _phase(namespace, "first") == "Succeeded", timeout=90, what="first")
    assert a.handled("DataPipeline", "first")
    assert not b.handled("DataPipeline", "first"), "the standing-by replica acted"
    assert RESUMED not in b.output()

    assert a.stop() == 0
    wait_for(lambda: len(_peers(namespace)) == 1, timeout=30, what="a to leave the peering")
    wait_for(lambda: RESUMED in b.output(), timeout=60, what="b to take over")
    _pipeline(namespace, "second")
    wait_for(lambda: _phase(namespace, "second") == "Succeeded", timeout=90, what="second")
    assert b.handled("DataPipeline", "second"), b.output()[-3000:]
