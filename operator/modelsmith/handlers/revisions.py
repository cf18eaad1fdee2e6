"""An InferenceService's revisions and traffic as the cluster has them, and applying them.

Each revision is a ConfigMap (immutable: the spec it was made from), a server
Deployment, a Service and an HPA; the traffic backend (the router, Gateway API or
KServe) splits requests between them. `handlers/inference.py` decides what should be;
this module reads what is and applies the decision.
"""

from __future__ import annotations

import json
from typing import Any

from modelsmith import jobstatus, k8s
from modelsmith.api.inference import (
    INFERENCESERVICE,
    Backend,
    InferenceServiceSpec,
    InferenceServiceStatus,
)
from modelsmith.api.meta import GROUP
from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import (
    MODEL_BYTES_ANNOTATION,
    REVISION_LABEL,
    Revision,
    desired_hpa,
    desired_revision_configmap,
    desired_revision_deployment,
    desired_revision_service,
    placement,
    revision_config,
)
from modelsmith.builders.router import desired_router, desired_routes_configmap, route_table
from modelsmith.builders.traffic import desired_httproute, desired_kserve
from modelsmith.canary.rollout import Plan
from modelsmith.config import Settings
from modelsmith.contract import TASK_CONFIG_KEY, TaskConfig

OWNER_LABEL = f"{GROUP}/{INFERENCESERVICE.kind.lower()}"
KSERVE_READY = "Ready"
"""KServe's own condition type on its InferenceService (not one of ours)."""


def available(deployment: dict[str, Any]) -> bool:
    want = max(int(deployment.get("spec", {}).get("replicas", 1) or 0), 1)
    status = deployment.get("status", {}) or {}
    return int(status.get("availableReplicas", 0) or 0) >= want


def revision_deployments(owner: Owner) -> dict[str, dict[str, Any]]:
    selector = f"{OWNER_LABEL}={owner.name},app.kubernetes.io/component=server"
    found = k8s.list_("apps/v1", "Deployment", owner.namespace, selector)
    return {d["metadata"]["labels"][REVISION_LABEL]: d for d in found}


def failing(owner: Owner, ready: dict[str, bool]) -> dict[str, str]:
    """Why each revision that is not ready fails, in its pods' words; a revision whose
    pods are merely starting is absent."""
    failing: dict[str, str] = {}
    for revision in (r for r, ok in ready.items() if not ok):
        pods = k8s.list_("v1", "Pod", owner.namespace, f"{REVISION_LABEL}={revision}")
        reasons = [jobstatus.stuck_reason(p) or jobstatus.crash_reason(p) for p in pods]
        found = [r for r in reasons if r]
        if found:
            failing[revision] = found[0]
    return failing


def kserve_ready(owner: Owner, current: InferenceServiceStatus, desired: str) -> dict[str, bool]:
    """KServe's Ready condition, credited to the revision its object was last written for."""
    obj = k8s.get("serving.kserve.io/v1beta1", "InferenceService", owner.namespace, owner.name)
    if obj is None:
        return {}
    conds = (obj.get("status") or {}).get("conditions") or []
    ok = any(c.get("type") == KSERVE_READY and c.get("status") == "True" for c in conds)
    written = (obj["metadata"].get("annotations") or {}).get(REVISION_LABEL)
    ready = {current.stable_revision: True} if current.stable_revision else {}
    if written == desired:
        ready[desired] = ok
    return ready


def snapshot(owner: Owner, revision: str) -> Revision | None:
    """A revision as it was made, from its own ConfigMap (the spec has moved on)."""
    cm = k8s.get("v1", "ConfigMap", owner.namespace, revision)
    if cm is None:
        return None
    config = TaskConfig.model_validate(json.loads(cm["data"][TASK_CONFIG_KEY]))
    spec = InferenceServiceSpec.model_validate(config.spec)
    size = (cm["metadata"].get("annotations") or {}).get(MODEL_BYTES_ANNOTATION)
    return Revision(revision, spec, config.inputs["model"], int(size) if size else None)


def apply_revision(
    owner: Owner, rev: Revision, spec: InferenceServiceSpec, settings: Settings, scaled: bool
) -> None:
    """One revision's ConfigMap (immutable, made once), Deployment, Service and HPA.
    Replicas and autoscaling follow the current spec whichever revision it is."""
    k8s.create_if_absent(
        desired_revision_configmap(
            owner, rev.name, revision_config(owner, rev.spec, rev.model_uri), rev.model_bytes
        )
    )
    hpa = spec.autoscaling is not None and not scaled
    replicas = 0 if scaled else (None if hpa else spec.replicas)
    k8s.apply(desired_revision_deployment(owner, rev, settings, replicas))
    k8s.apply(desired_revision_service(owner, rev.name))
    if hpa and spec.autoscaling is not None:
        k8s.apply(desired_hpa(owner, rev.name, spec.autoscaling))
    else:
        k8s.delete("autoscaling/v2", "HorizontalPodAutoscaler", owner.namespace, rev.name)


def url(owner: Owner, spec: InferenceServiceSpec) -> str:
    if spec.traffic.backend == Backend.GATEWAY_API and spec.traffic.gateway_ref is not None:
        return f"gateway {spec.traffic.gateway_ref.name}, HTTPRoute {owner.name}"
    return f"http://{owner.name}.{owner.namespace}.svc"


def apply_traffic(
    owner: Owner, spec: InferenceServiceSpec, result: Plan, newest: Revision, settings: Settings
) -> None:
    """The split, by the backend the spec names."""
    split = result.split
    if spec.traffic.backend == Backend.GATEWAY_API and spec.traffic.gateway_ref is not None:
        k8s.apply(desired_httproute(owner, spec.traffic.gateway_ref, split))
    elif spec.traffic.backend == Backend.KSERVE:
        # KServe keeps the previous ready revision itself: the object always describes
        # the newest one, and canaryTrafficPercent 0 is KServe's rollback.
        percent = split.weight if split.canary else (0 if result.scaled_down else None)
        k8s.apply(desired_kserve(owner, newest, settings, percent))
    else:
        k8s.apply(desired_routes_configmap(owner, route_table(owner, split)))
        for obj in desired_router(owner, settings, placement(spec)):
            k8s.apply(obj)


def delete_revision(owner: Owner, revision: str) -> None:
    for api_version, kind in (
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
    ):
        k8s.delete(api_version, kind, owner.namespace, revision)
