"""An InferenceService's router: its identity (RBAC), Deployment, Service and route table.

The router carries out the operator's Split (routes.py): weights, pinning header,
mirror. Its table lives in one ConfigMap it may read, and nothing else.
"""

from __future__ import annotations

from typing import Any

from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import (
    revision_url,
)
from modelsmith.config import Settings
from modelsmith.routes import ROUTES_KEY, Mirror, RevisionRoute, RouteTable, Split

ROUTER_PORT = 8080
ROUTER_METRICS_PORT = 9090


def router_name(owner: Owner) -> str:
    return f"{owner.name}-router"


def routes_name(owner: Owner) -> str:
    return f"{owner.name}-routes"


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
