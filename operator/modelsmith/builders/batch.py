"""Desired children of any batch kind: task-config ConfigMap, Indexed Job, headless Service.

Pure: typed spec in, manifest dicts out, with deterministic names, so a reconcile can
rebuild them at any time and server-side apply turns "same input" into "no change".
Multi-pod runs get a headless Service so pod 0 has a stable DNS name, which is where
torchrun's static rendezvous (MASTER_ADDR) points, as in Kubeflow's PyTorchJob.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelsmith.api.common import WorkloadSpec
from modelsmith.builders import storage
from modelsmith.builders.owner import Owner
from modelsmith.config import STATUS_AUDIENCE, Settings
from modelsmith.contract import (
    TASK_CONFIG_DIR,
    TASK_CONFIG_KEY,
    TASK_CONFIG_PATH,
    ExitCode,
    TaskConfig,
)

RENDEZVOUS_PORT = 29500
RAY_PORT = 6379
RAY_TOKEN_KEY = "token"  # noqa: S105 (a Secret key name)
STATUS_TOKEN_DIR = "/var/run/secrets/modelsmith.io/status"  # noqa: S105 (a mount path)
STATUS_TOKEN_SECONDS = 3600
FAILURE_COUNT_ANNOTATION = "batch.kubernetes.io/job-index-failure-count"


@dataclass(frozen=True)
class Layout:
    """How a run maps onto pods: one Indexed Job pod per worker (node)."""

    component: str
    """Image and container name: data, trainer or quantizer."""
    entrypoint: str
    """What the image runs (`modelsmith-runtime <entrypoint>`): data, pretrain, finetune…"""
    workers: int
    gpus_per_worker: int
    torchrun: bool = False
    """Launch with torchrun across the workers (rendezvous at pod 0)."""
    ray: bool = False
    """The workers form a Ray cluster: pod 0 is the head and runs the driver, the run
    succeeds when pod 0 does (the Job's success policy then stops the others)."""


@dataclass(frozen=True)
class Artifacts:
    """Every URI a run's pods touch, resolved: what gets mounted and credentialed."""

    output: str
    reads: tuple[str, ...] = ()
    secret: str | None = None
    """The Secret whose AWS keys the pods get (the operator never reads it)."""

    @property
    def uris(self) -> tuple[str, ...]:
        return (self.output, *self.reads)


def job_name(owner: Owner) -> str:
    return f"{owner.name}-run"


def config_name(owner: Owner) -> str:
    return f"{owner.name}-task"


def service_name(owner: Owner) -> str:
    return f"{owner.name}-workers"


def ray_token_name(owner: Owner) -> str:
    return f"{owner.name}-ray-token"


def task_config(
    owner: Owner, spec: WorkloadSpec, inputs: dict[str, str], output_uri: str
) -> dict[str, Any]:
    """What the workload reads: its spec, with every input resolved to a URI."""
    return TaskConfig(
        kind=owner.kind,
        name=owner.name,
        inputs=inputs,
        output=output_uri,
        uid=owner.uid,
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def desired_configmap(owner: Owner, layout: Layout, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(config_name(owner), layout.component),
        "data": {TASK_CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True)},
    }


def desired_service(owner: Owner, layout: Layout) -> dict[str, Any] | None:
    """A headless Service naming each worker pod; None for single-pod runs."""
    if layout.workers < 2:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(service_name(owner), layout.component),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": job_name(owner)},
            "ports": [
                {"name": "ray", "port": RAY_PORT}
                if layout.ray
                else {"name": "rendezvous", "port": RENDEZVOUS_PORT}
            ],
        },
    }


def _status_reporting(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Env and volume that let a pod report progress to the operator, as Kubeflow
    Trainer's status server does: a projected token for our audience proves which pod
    is talking, so pods need no RBAC of their own and cannot write another's status."""
    if not settings.status_url:
        return [], []
    env = [
        {"name": "MODELSMITH_STATUS_URL", "value": settings.status_url},
        {"name": "MODELSMITH_STATUS_TOKEN_FILE", "value": f"{STATUS_TOKEN_DIR}/token"},
    ]
    volume = {
        "name": "status-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": STATUS_AUDIENCE,
                        "expirationSeconds": STATUS_TOKEN_SECONDS,
                        "path": "token",
                    }
                }
            ]
        },
    }
    return env, [volume]


def _env(owner: Owner, layout: Layout) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "MODELSMITH_TASK_CONFIG", "value": TASK_CONFIG_PATH},
        {"name": "MODELSMITH_WORKERS", "value": str(layout.workers)},
        {
            "name": "MODELSMITH_WORKER_INDEX",
            "valueFrom": {
                "fieldRef": {
                    "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                }
            },
        },
        {
            "name": "MODELSMITH_ATTEMPT",
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{FAILURE_COUNT_ANNOTATION}']"}
            },
        },
    ]
    if layout.torchrun:
        env += [
            {"name": "MASTER_ADDR", "value": f"{job_name(owner)}-0.{service_name(owner)}"},
            {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
            {"name": "NNODES", "value": str(layout.workers)},
            {"name": "NPROC_PER_NODE", "value": str(max(layout.gpus_per_worker, 1))},
        ]
    if layout.ray:
        env += _ray_env(owner)
    return env


def _ray_env(owner: Owner) -> list[dict[str, Any]]:
    """Where pod 0's Ray head is, and the run's own token: Ray's token authentication
    keeps other pods on the network from joining the cluster or submitting code."""
    return [
        {"name": "MODELSMITH_RAY_HEAD", "value": f"{job_name(owner)}-0.{service_name(owner)}"},
        {"name": "MODELSMITH_RAY_PORT", "value": str(RAY_PORT)},
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": ray_token_name(owner), "key": RAY_TOKEN_KEY}},
        },
    ]


def desired_ray_token(owner: Owner, layout: Layout, token: str) -> dict[str, Any] | None:
    """The run's Ray token Secret; created once (never applied: a new random token on
    each reconcile would lock out the pods already running)."""
    if not layout.ray:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": owner.metadata(ray_token_name(owner), layout.component),
        "stringData": {RAY_TOKEN_KEY: token},
    }


def _pod_metadata(owner: Owner, spec: WorkloadSpec, layout: Layout) -> dict[str, Any]:
    """The user's labels first, ours on top: selectors must keep matching."""
    meta: dict[str, Any] = {"labels": spec.pod_metadata.labels | owner.labels(layout.component)}
    if spec.pod_metadata.annotations:
        meta["annotations"] = dict(spec.pod_metadata.annotations)
    return meta


POD_FAILURE_POLICY: dict[str, Any] = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {"operator": "In", "values": [int(ExitCode.BAD_INPUT)]},
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}
"""Bad input fails the run at once; preemption and eviction are not the workload's fault
and do not use up a retry. Everything else is retried, per worker, backoffLimit times."""


def desired_job(
    owner: Owner, spec: WorkloadSpec, layout: Layout, settings: Settings, artifacts: Artifacts
) -> dict[str, Any]:
    res = spec.resources
    scratch_size = spec.storage.scratch_size
    requests: dict[str, str] = {
        "cpu": res.cpu,
        "memory": res.memory,
        "ephemeral-storage": scratch_size,
    }
    limits: dict[str, str] = {"memory": res.memory}
    if layout.gpus_per_worker:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(layout.gpus_per_worker)
    args = [layout.entrypoint, f"--task-config={TASK_CONFIG_PATH}"]
    status_env, status_volumes = _status_reporting(settings)
    claims = storage.claim_mounts(artifacts.output, artifacts.reads)
    scratch_volume, scratch_mount, scratch_env = storage.scratch(scratch_size)
    mounts = [{"name": "task-config", "mountPath": TASK_CONFIG_DIR, "readOnly": True}]
    mounts += [
        {"name": v["name"], "mountPath": STATUS_TOKEN_DIR, "readOnly": True} for v in status_volumes
    ]
    mounts += [*claims.mounts, scratch_mount]
    env = _env(owner, layout) + status_env + claims.env_table() + scratch_env
    env += storage.credentials_env(artifacts.secret)
    # The user's own variables last: where a name repeats, the kubelet keeps the last.
    env += [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in spec.env]
    container: dict[str, Any] = {
        "name": layout.component,
        "image": spec.image or settings.image(layout.component),
        "args": args,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(storage.CONTAINER_SECURITY),
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": dict(storage.POD_SECURITY),
        "containers": [container],
        "volumes": [
            {"name": "task-config", "configMap": {"name": config_name(owner)}},
            *status_volumes,
            *claims.volumes,
            scratch_volume,
        ],
    }
    if layout.workers > 1:
        pod["subdomain"] = service_name(owner)
    if layout.ray or layout.torchrun:
        # Ray's object store and NCCL's intra-node transport live in /dev/shm, which a
        # container gets 64 MiB of unless it mounts more (KubeRay does the same).
        pod["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})  # noqa: S108
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": layout.workers,
        "parallelism": layout.workers,
        "backoffLimitPerIndex": spec.run_policy.backoff_limit,
        "maxFailedIndexes": 0,
        "podFailurePolicy": POD_FAILURE_POLICY,
        "suspend": spec.suspend,
        "template": {"metadata": _pod_metadata(owner, spec, layout), "spec": pod},
    }
    if layout.ray and layout.workers > 1:
        job_spec["successPolicy"] = {"rules": [{"succeededIndexes": "0", "succeededCount": 1}]}
    if spec.run_policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    if spec.run_policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(job_name(owner), layout.component),
        "spec": job_spec,
    }
