"""Desired children of an InferenceService: per-revision server, router, route, HPA.

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
from modelsmith.api.inference import (
    Autoscaling,
    AutoscalingMetric,
    GatewayRef,
    InferenceServiceSpec,
    Runtime,
)
from modelsmith.builders import storage
from modelsmith.builders.batch import Owner
from modelsmith.config import Settings
from modelsmith.contract import TASK_CONFIG_DIR, TASK_CONFIG_KEY, TASK_CONFIG_PATH, TaskConfig
from modelsmith.routes import PIN_HEADER, ROUTES_KEY, Mirror, RevisionRoute, RouteTable

SERVER_PORT = 8080
ROUTER_PORT = 8080
ROUTER_METRICS_PORT = 9090
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


@dataclass(frozen=True)
class Split:
    """Who gets user traffic: ``weight`` percent to the canary, the rest to stable."""

    stable: str
    canary: str | None = None
    weight: int = 0
    mirror_percent: int = 0

    @property
    def revisions(self) -> list[str]:
        return [self.stable] + ([self.canary] if self.canary and self.canary != self.stable else [])


def revision_name(owner_name: str, spec: InferenceServiceSpec, model_uri: str) -> str:
    """NAME-<10 hex digits> of what the revision serves: a DNS label as it stands, since
    the API refuses longer names (INFERENCESERVICE.longest_child)."""
    rendered = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    identity = {k: rendered.get(k) for k in _REVISION_FIELDS} | {"model": model_uri}
    identity |= {k: rendered[k] for k in _PLACEMENT_FIELDS if rendered.get(k)}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{owner_name}-{digest[:10]}"


def router_name(owner: Owner) -> str:
    return f"{owner.name}-router"


def routes_name(owner: Owner) -> str:
    return f"{owner.name}-routes"


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


def _server_container(
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


def _mount_config(
    rev: Revision, settings: Settings, container: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's volumes and init containers; for the builtin server also its task
    config and API key files. Returns (volumes, init containers)."""
    spec = rev.spec
    _dir, model, init = _model_storage(spec, rev.model_uri, settings, rev.model_bytes)
    volumes = list(model.volumes)
    if spec.runtime != Runtime.BUILTIN:
        return volumes, init
    volumes.append({"name": "task-config", "configMap": {"name": rev.name}})
    mounts = [{"name": "task-config", "mountPath": TASK_CONFIG_DIR, "readOnly": True}]
    if spec.api_key_secret:
        volumes.append({"name": "api-key", "secret": {"secretName": spec.api_key_secret.name}})
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    container["volumeMounts"] = [*container["volumeMounts"], *mounts]
    return volumes, init


def placement(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The pod-spec fields that choose nodes, for the server and the router pods alike."""
    out: dict[str, Any] = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    return out


def _server_pod(
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
    container = _server_container(owner, revision, rev.spec, rev.model_uri, settings)
    volumes, init = _mount_config(rev, settings, container)
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
            "spec": _server_pod(rev.spec, container, volumes, init),
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


def route_table(owner: Owner, split: Split) -> RouteTable:
    """The split the router carries out."""
    revs = split.revisions
    weight = split.weight if len(revs) > 1 else 0
    routes = [RevisionRoute(name=revs[0], url=revision_url(owner, revs[0]), weight=100 - weight)]
    mirror = None
    if len(revs) > 1:
        routes.append(RevisionRoute(name=revs[1], url=revision_url(owner, revs[1]), weight=weight))
        if split.mirror_percent:
            mirror = Mirror(revision=revs[1], percent=split.mirror_percent)
    return RouteTable(
        namespace=owner.namespace, service=owner.name, revisions=routes, mirror=mirror
    )


def desired_routes_configmap(owner: Owner, table: RouteTable) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(routes_name(owner), "router"),
        "data": {ROUTES_KEY: table.render()},
    }


def desired_router(
    owner: Owner, settings: Settings, pod_placement: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The router: its identity (it may read its one ConfigMap, nothing else), its
    Deployment (on the nodes ``pod_placement`` selects), and the Service clients call,
    named after the InferenceService."""
    name = router_name(owner)
    labels = owner.labels("router")
    selector = {"app.kubernetes.io/instance": owner.name, "app.kubernetes.io/component": "router"}
    rule = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [routes_name(owner)],
        "verbs": ["get", "list", "watch"],
    }
    container = {
        "name": "router",
        "image": settings.image("operator"),
        "args": [
            "router",
            f"--configmap={owner.namespace}/{routes_name(owner)}",
            f"--port={ROUTER_PORT}",
            f"--metrics-port={ROUTER_METRICS_PORT}",
        ],
        "ports": [
            {"name": "http", "containerPort": ROUTER_PORT},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "http"}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/-/healthy", "port": "http"}, "periodSeconds": 10},
        "resources": {
            # A proxy that waits on its upstreams: 100m, so two routers and two serving
            # revisions fit a 2-core node next to the batch stage of a second chain.
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(name, "router"),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ROUTER_METRICS_PORT),
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    **(pod_placement or {}),
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": owner.metadata(name, "router")},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": owner.metadata(name, "router"),
            "rules": [rule],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": owner.metadata(name, "router"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
        },
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": owner.metadata(owner.name, "router"),
            "spec": {
                "selector": selector,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http"},
                    {"name": "metrics", "port": ROUTER_METRICS_PORT, "targetPort": "metrics"},
                ],
            },
        },
    ]


def desired_httproute(owner: Owner, gateway: GatewayRef, split: Split) -> dict[str, Any]:
    """Gateway API: the same split, pinning header and mirror, done by the Gateway."""
    revisions = split.revisions
    stable = revisions[0]
    canary = revisions[-1]
    weight = split.weight if len(revisions) > 1 else 0
    mirror_percent = split.mirror_percent
    pinned = [
        {
            "matches": [{"headers": [{"name": PIN_HEADER, "value": rev}]}],
            "backendRefs": [{"name": rev, "port": SERVER_PORT}],
        }
        for rev in revisions
    ]
    weighted: dict[str, Any] = {
        "backendRefs": [
            {"name": stable, "port": SERVER_PORT, "weight": 100 - weight},
            *(
                [{"name": canary, "port": SERVER_PORT, "weight": weight}]
                if len(revisions) > 1
                else []
            ),
        ]
    }
    if len(revisions) > 1 and mirror_percent:
        weighted["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": {"name": canary, "port": SERVER_PORT},
                    "percent": mirror_percent,
                },
            }
        ]
    parent: dict[str, Any] = {"name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": owner.metadata(owner.name, "route"),
        "spec": {"parentRefs": [parent], "rules": [*pinned, weighted]},
    }


def desired_kserve(
    owner: Owner, rev: Revision, settings: Settings, canary_percent: int | None
) -> dict[str, Any]:
    """KServe's own InferenceService: KServe keeps the previous revision and splits
    traffic by canaryTrafficPercent; the analysis stays ours."""
    revision, spec = rev.name, rev.spec
    container = _server_container(owner, revision, spec, rev.model_uri, settings)
    container["name"] = "kserve-container"
    for probe in ("readinessProbe", "livenessProbe"):
        container.pop(probe)
    volumes, init = _mount_config(rev, settings, container)
    predictor: dict[str, Any] = {
        k: v for k, v in _server_pod(spec, container, volumes, init).items() if v
    }
    if spec.autoscaling:
        predictor["minReplicas"] = spec.autoscaling.min_replicas
        predictor["maxReplicas"] = spec.autoscaling.max_replicas
    else:
        predictor["minReplicas"] = predictor["maxReplicas"] = spec.replicas
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    meta = owner.metadata(owner.name, "kserve")
    meta["annotations"] = {REVISION_LABEL: revision}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": predictor},
    }
