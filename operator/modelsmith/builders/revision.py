"""An InferenceService's revisions: per-revision task config, server Deployment, Service, HPA.

Pure, like the batch builders. A revision is everything that goes into a server pod
(model, runtime, image, resources, limits…) hashed into its name, so a change of any of
it makes a new revision that starts as canary, and the old one keeps serving untouched
until the new one is promoted. Each revision keeps its own task config in a ConfigMap
named after it: that snapshot, not the current spec, is what its pods are built from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from modelsmith.api import uri
from modelsmith.api.inference import Autoscaling, AutoscalingMetric, InferenceServiceSpec, Runtime
from modelsmith.builders import storage
from modelsmith.builders.owner import Owner
from modelsmith.config import Settings
from modelsmith.contract import TASK_CONFIG_DIR, TASK_CONFIG_KEY, TASK_CONFIG_PATH, TaskConfig

SERVER_PORT = 8080
REVISION_LABEL = "modelsmith.io/revision"
API_KEY_DIR = "/var/run/secrets/modelsmith.io/api-key"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
KSERVE_HF_IMAGE = "kserve/huggingfaceserver:v0.15.2"

_REVISION_FIELDS = (
    "runtime",
    "resources",
    "apiKeySecret",
    "limits",
    "batching",
    "outputFilter",
    "servedModelName",
    "image",
    "storage",
    "serviceAccountName",
)
"""What goes into a server pod: a change of any of these is a new revision. Replicas and
autoscaling are not: they scale whichever revision is serving."""
_PLACEMENT_FIELDS = ("nodeSelector", "tolerations")
"""Also part of a revision, but only when set: services that never set them keep the
revision names they had before these fields existed (no canary on an upgrade)."""


@dataclass(frozen=True)
class Revision:
    """One servable version: its name, the spec it was made from, its model."""

    name: str
    spec: InferenceServiceSpec
    model_uri: str
    model_bytes: int | None = None
    """The model's size as its producer reported it: what a fetched copy needs."""


def revision_name(owner_name: str, spec: InferenceServiceSpec, model_uri: str) -> str:
    """NAME-<10 hex digits> of what the revision serves: a DNS label as it stands, since
    the API refuses longer names (INFERENCESERVICE.longest_child)."""
    rendered = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    identity = {k: rendered.get(k) for k in _REVISION_FIELDS} | {"model": model_uri}
    identity |= {k: rendered[k] for k in _PLACEMENT_FIELDS if rendered.get(k)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{owner_name}-{digest[:10]}"


def revision_config(owner: Owner, spec: InferenceServiceSpec, model_uri: str) -> dict[str, Any]:
    """The TaskConfig a revision's server reads; also the revision's own record."""
    return TaskConfig(
        kind=owner.kind,
        name=owner.name,
        inputs={"model": model_uri},
        output="",
        spec=spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    ).model_dump(mode="json", by_alias=True, exclude_none=True)


def _revision_metadata(owner: Owner, revision: str) -> dict[str, Any]:
    meta = owner.metadata(revision, "server")
    meta["labels"][REVISION_LABEL] = revision
    return meta


MODEL_BYTES_ANNOTATION = "modelsmith.io/model-bytes"


def desired_revision_configmap(
    owner: Owner, revision: str, config: dict[str, Any], model_bytes: int | None = None
) -> dict[str, Any]:
    """The revision's record. The model's size rides along as an annotation, so the
    revision's pods come out the same when they are rebuilt from this snapshot."""
    meta = _revision_metadata(owner, revision)
    if model_bytes is not None:
        meta["annotations"] = {MODEL_BYTES_ANNOTATION: str(model_bytes)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {TASK_CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True)},
    }


def model_volume_size(spec: InferenceServiceSpec, model_bytes: int | None) -> str:
    """Room for a fetched model: its reported size with 10% and 512 MiB to spare, never
    less than scratchSize; scratchSize when the size is unknown (a plain URI)."""
    if model_bytes is None:
        return spec.storage.scratch_size
    needed = -(-model_bytes * 11 // 10 // (1 << 20)) + 512
    if needed <= _mebibytes(spec.storage.scratch_size):
        return spec.storage.scratch_size
    return f"{needed}Mi"


_MEBIBYTES = {"Ki": 2**-10, "Mi": 1.0, "Gi": 2**10, "Ti": 2**20, "Pi": 2**30, "m": 1e-3 / 2**20}
_MEBIBYTES |= {s: 10 ** (3 * (i + 1)) / 2**20 for i, s in enumerate("KMGTP")}


def _mebibytes(quantity: str) -> float:
    """A resource.Quantity (the API's pattern: digits and one suffix) in MiB."""
    for suffix in sorted(_MEBIBYTES, key=len, reverse=True):
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * _MEBIBYTES[suffix]
    return float(quantity) / 2**20


def _model_storage(
    spec: InferenceServiceSpec, model_uri: str, settings: Settings, model_bytes: int | None
) -> tuple[str, storage.Mounts, list[dict[str, Any]]]:
    """Where the model is inside the server pod, what gets it there, and the init
    containers that fetch it. A claim is mounted read-only (one copy for every
    replica and revision); object storage is downloaded before the server starts, by
    the server image's `fetch`, so a half-written model is refused there (Init:Error)
    and restarts of the server do not download again."""
    location = uri.parse(model_uri)
    if location.scheme == uri.Scheme.NODE:
        return location.path, storage.Mounts(), []
    if location.scheme == uri.Scheme.PVC:
        mounts = storage.claim_mounts(None, [model_uri])
        return mounts.table[f"pvc://{location.root}"] + f"/{location.path}", mounts, []
    size = model_volume_size(spec, model_bytes)
    mounts = storage.Mounts(
        volumes=[{"name": "model", "emptyDir": {"sizeLimit": size}}],
        mounts=[{"name": "model", "mountPath": storage.MODEL_DIR, "readOnly": True}],
        table={model_uri.rstrip("/"): storage.MODEL_DIR},
    )
    scratch_volume, scratch_mount, scratch_env = storage.scratch(spec.storage.scratch_size)
    secret = spec.storage.secret_ref.name if spec.storage.secret_ref else None
    if secret is None and spec.service_account_name is None:
        secret = settings.default_storage_secret
    fetch = {
        "name": "fetch-model",
        "image": settings.image("server"),
        "args": ["fetch", f"--uri={model_uri}", f"--dest={storage.MODEL_DIR}"],
        "env": scratch_env + storage.credentials_env(secret),
        "volumeMounts": [{"name": "model", "mountPath": storage.MODEL_DIR}, scratch_mount],
        "resources": {"requests": {"ephemeral-storage": size}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(storage.CONTAINER_SECURITY),
    }
    mounts.volumes.append(scratch_volume)
    return storage.MODEL_DIR, mounts, [fetch]


def server_container(
    owner: Owner, revision: str, spec: InferenceServiceSpec, model_uri: str, settings: Settings
) -> dict[str, Any]:
    """The builtin server reads its task config; vLLM and KServe's HF server take flags."""
    served = spec.served_model_name or owner.name
    model_dir, mounts, _init = _model_storage(spec, model_uri, settings, None)
    env: list[dict[str, Any]] = [{"name": "MODELSMITH_REVISION", "value": revision}]
    env += mounts.env_table()
    if spec.runtime == Runtime.VLLM:
        image = spec.image or VLLM_IMAGE
        args = [
            f"--model={model_dir}",
            f"--served-model-name={served}",
            f"--port={SERVER_PORT}",
            f"--max-num-seqs={spec.batching.max_batch_size}",
        ]
        if spec.api_key_secret:
            key = {"name": spec.api_key_secret.name, "key": spec.api_key_secret.key}
            env.append({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": key}})
        ready, live = "/health", "/health"
    elif spec.runtime == Runtime.KSERVE:
        image = spec.image or KSERVE_HF_IMAGE
        args = [f"--model_name={served}", f"--model_dir={model_dir}"]
        args.append(f"--http_port={SERVER_PORT}")
        ready, live = "/v2/health/ready", "/v2/health/live"
    else:
        image = spec.image or settings.image("server")
        args = ["serve", f"--task-config={TASK_CONFIG_PATH}"]
        env.append({"name": "MODELSMITH_PORT", "value": str(SERVER_PORT)})
        if spec.api_key_secret:
            path = f"{API_KEY_DIR}/{spec.api_key_secret.key}"
            env.append({"name": "MODELSMITH_API_KEY_FILE", "value": path})
        ready, live = "/v2/health/ready", "/v2/health/live"
    res = spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(res.gpus)
    return {
        "name": "server",
        "image": image,
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": SERVER_PORT}],
        "resources": {"requests": requests, "limits": limits},
        "readinessProbe": {
            "httpGet": {"path": ready, "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": live, "port": "http"},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
        "volumeMounts": list(mounts.mounts),
    }


def mount_config(rev: Revision, settings: Settings) -> Mounted:
    """The model's volumes and init containers; for the builtin server also its task
    config and API key files, with the mounts the server container adds for them."""
    spec = rev.spec
    _dir, model, init = _model_storage(spec, rev.model_uri, settings, rev.model_bytes)
    volumes = list(model.volumes)
    if spec.runtime != Runtime.BUILTIN:
        return Mounted(volumes, init, [])
    volumes.append({"name": "task-config", "configMap": {"name": rev.name}})
    mounts = [{"name": "task-config", "mountPath": TASK_CONFIG_DIR, "readOnly": True}]
    if spec.api_key_secret:
        volumes.append({"name": "api-key", "secret": {"secretName": spec.api_key_secret.name}})
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    return Mounted(volumes, init, mounts)


@dataclass(frozen=True)
class Mounted:
    """What a server pod gets for its model and config: returned, not written into the
    caller's container, so no builder changes what it was given."""

    volumes: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    mounts: list[dict[str, Any]]

    def onto(self, container: dict[str, Any]) -> dict[str, Any]:
        return {**container, "volumeMounts": [*container["volumeMounts"], *self.mounts]}


def placement(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The pod-spec fields that choose nodes, for the server and the router pods alike."""
    out: dict[str, Any] = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    return out


def server_pod(
    spec: InferenceServiceSpec,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    init: list[dict[str, Any]],
) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [container], "volumes": volumes, **placement(spec)}
    if init:
        pod["initContainers"] = init
    if volumes:
        # The images' gid: a claim or emptyDir the fetch writes is readable by the server.
        pod["securityContext"] = {
            "fsGroup": storage.FS_GROUP,
            "fsGroupChangePolicy": "OnRootMismatch",
        }
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    return pod


def desired_revision_deployment(
    owner: Owner, rev: Revision, settings: Settings, replicas: int | None
) -> dict[str, Any]:
    """``replicas`` None: an HPA owns the count, so apply must not fight it."""
    revision = rev.name
    mounted = mount_config(rev, settings)
    container = mounted.onto(server_container(owner, revision, rev.spec, rev.model_uri, settings))
    volumes, init = mounted.volumes, mounted.init_containers
    selector = {"app.kubernetes.io/instance": owner.name, REVISION_LABEL: revision}
    meta = _revision_metadata(owner, revision)
    template_meta = {
        "labels": meta["labels"],
        "annotations": {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(SERVER_PORT),
            "prometheus.io/path": "/metrics",
        },
    }
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        # A new pod must be ready before an old one goes: capacity never dips.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
        "template": {
            "metadata": template_meta,
            "spec": server_pod(rev.spec, container, volumes, init),
        },
    }
    if replicas is not None:
        deploy_spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deploy_spec}


def desired_revision_service(owner: Owner, revision: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _revision_metadata(owner, revision),
        "spec": {
            "selector": {"app.kubernetes.io/instance": owner.name, REVISION_LABEL: revision},
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}],
        },
    }


def desired_hpa(owner: Owner, revision: str, autoscaling: Autoscaling) -> dict[str, Any]:
    """CPU, or a per-pod metric served by prometheus-adapter (requests in flight)."""
    if autoscaling.metric == AutoscalingMetric.CPU:
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": autoscaling.target_cpu_utilization,
                },
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": autoscaling.pods_metric},
                "target": {
                    "type": "AverageValue",
                    "averageValue": str(autoscaling.target_concurrency),
                },
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _revision_metadata(owner, revision),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": revision},
            "minReplicas": max(autoscaling.min_replicas, 1),
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [metric],
        },
    }


def revision_url(owner: Owner, revision: str) -> str:
    return f"http://{revision}.{owner.namespace}.svc:{SERVER_PORT}"
