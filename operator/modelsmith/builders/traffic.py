"""The traffic backends that are not the built-in router: Gateway API and KServe.

Both carry out the same Split (routes.py) with another project's objects: an HTTPRoute
whose weights the Gateway applies, or KServe's own InferenceService and its
canaryTrafficPercent. The analysis stays the operator's either way.
"""

from __future__ import annotations

from typing import Any

from modelsmith.api.inference import GatewayRef
from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import (
    REVISION_LABEL,
    SERVER_PORT,
    Revision,
    mount_config,
    server_container,
    server_pod,
)
from modelsmith.config import Settings
from modelsmith.routes import PIN_HEADER, Split


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
    mounted = mount_config(rev, settings)
    served = mounted.onto(server_container(owner, revision, spec, rev.model_uri, settings))
    # KServe names its container and probes it itself.
    probes = ("readinessProbe", "livenessProbe")
    container = {k: v for k, v in served.items() if k not in probes} | {"name": "kserve-container"}
    volumes, init = mounted.volumes, mounted.init_containers
    predictor: dict[str, Any] = {
        k: v for k, v in server_pod(spec, container, volumes, init).items() if v
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
