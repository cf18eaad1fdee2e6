"""Ray runs on the real control plane: the token Secret, the cluster env, the success
policy that ends the run with pod 0."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from modelsmith import k8s
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _pretrain_ray() -> dict[str, Any]:
    return {
        "dataset": {"uri": "/data/shards"},
        "architecture": {"layers": 2, "hiddenSize": 128, "heads": 4},
        "training": {"globalBatchSize": 16, "microBatchSize": 1, "learningRate": 1e-3, "steps": 5},
        "distribution": {"nodes": 2, "launcher": "ray"},
        "resources": {"gpus": 8},
        "output": {"uri": "/data/model"},
    }


def _phase(namespace: str, name: str) -> str | None:
    obj: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        "modelsmith.io", "v1alpha1", namespace, "pretrainjobs", name
    )
    return obj.get("status", {}).get("phase")


def test_ray_pretraining_gets_its_own_token_and_ends_with_pod_0(
    operator: KopfRunner, namespace: str
) -> None:
    body = {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": "rayrun"},
        "spec": _pretrain_ray(),
    }
    client.CustomObjectsApi().create_namespaced_custom_object(
        "modelsmith.io", "v1alpha1", namespace, "pretrainjobs", body
    )
    core, batch = client.CoreV1Api(), client.BatchV1Api()
    wait_for(
        lambda: _phase(namespace, "rayrun") == "Succeeded",
        timeout=120,
        what="the Ray run to succeed",
    )
    secret = core.read_namespaced_secret("rayrun-ray-token", namespace)
    token = base64.b64decode(secret.data["token"]).decode()
    assert len(token) >= 32, "a random token, not a placeholder"
    assert secret.metadata.owner_references[0].name == "rayrun"
    job = batch.read_namespaced_job("rayrun-run", namespace)
    assert job.spec.success_policy.rules[0].succeeded_indexes == "0"
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["MODELSMITH_RAY_HEAD"].value == "rayrun-run-0.rayrun-workers"
    assert env["RAY_AUTH_TOKEN"].value_from.secret_key_ref.name == "rayrun-ray-token"
    assert "MASTER_ADDR" not in env
    # The operator creates the token again after each restart (its memo is empty then):
    # that must never replace the token the running pods hold.
    k8s.create_if_absent(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "rayrun-ray-token", "namespace": namespace},
            "stringData": {"token": "another"},
        }
    )
    again = core.read_namespaced_secret("rayrun-ray-token", namespace)
    assert base64.b64decode(again.data["token"]).decode() == token
