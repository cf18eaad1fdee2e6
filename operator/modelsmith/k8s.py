"""The few API calls the operator makes, on the official client, typed at the edge.

Children are written with server-side apply under one field manager, so applying the
same desired object twice is a no-op and fields other controllers own are left alone.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client

from modelsmith.api.meta import GROUP, VERSION
from modelsmith.config import FIELD_MANAGER
from modelsmith.metrics import API_REQUESTS

_PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Secret"): "secrets",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices",
    ("kopf.dev/v1", "KopfPeering"): "kopfpeerings",
    ("kopf.dev/v1", "ClusterKopfPeering"): "clusterkopfpeerings",
}


def _path(
    api_version: str, kind: str, namespace: str, name: str | None = None, plural: str | None = None
) -> str:
    plural = plural or _PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class ApiError(Exception):
    """A non-2xx answer from the API server, with its status code and Status message."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"{status} {reason}: {body[:500]}")
        self.status = status
        self.message = _status_message(body) or f"{status} {reason}"


def _status_message(body: str) -> str | None:
    """The human part of a metav1.Status body, which is what users need to read."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return message if isinstance(message, str) else None


@functools.cache
def _api_client() -> client.ApiClient:
    """One client, so one pool of kept-alive TLS connections, for every handler thread.

    A client per call opened a new TLS connection (with a client-certificate handshake)
    per request, which under load cost more than the requests themselves.
    """
    return client.ApiClient()


def _call(
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    API_REQUESTS.labels(method).inc()
    api = _api_client()
    _m, url, headers, payload, _files = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    resp = api.call_api(method, url, header_params=headers, body=payload)
    data: bytes = resp.read()  # type: ignore[no-untyped-call]
    if not 200 <= resp.status < 300:
        raise ApiError(resp.status, str(resp.reason), data.decode(errors="replace"))
    return cast(dict[str, Any], json.loads(data))


def apply(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return _call(
        "PATCH",
        _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
        body=obj,
        content_type="application/apply-patch+yaml",
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
    )


def create_if_absent(obj: dict[str, Any]) -> None:
    """Create an object that must never be overwritten once it exists (a generated
    secret): 409 Conflict means it is already there, which is success."""
    meta = obj["metadata"]
    try:
        _call(
            "POST",
            _path(obj["apiVersion"], obj["kind"], meta.get("namespace", "")),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER)],
        )
    except ApiError as exc:
        if exc.status != 409:
            raise


def secret_exists(namespace: str, name: str) -> bool:
    """Whether a Secret exists, without reading it: a dry-run create of an empty Secret
    by that name is refused with 409 when one exists, and persists nothing otherwise.
    It needs only the `create` verb the operator has for Ray tokens, so the operator
    still cannot read any Secret. A refusal we cannot interpret counts as "exists":
    the pod's own error then tells the rest."""
    try:
        _call(
            "POST",
            _path("v1", "Secret", namespace),
            body={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}},
            query=[("dryRun", "All"), ("fieldManager", FIELD_MANAGER)],
        )
    except ApiError:
        return True  # 409 AlreadyExists, or a refusal that leaves the question to the pod
    return False


def ensure_peering(name: str, namespaces: list[str]) -> None:
    """Create kopf's peering object(s) unless they exist: one ClusterKopfPeering for a
    cluster-wide operator, a KopfPeering per namespace otherwise.

    kopf with a named peering refuses to start without its object; creating it here
    rather than in the chart avoids a chart whose custom resources need CRDs that the
    same release is only now installing.
    """
    kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
    for namespace in namespaces or [""]:
        meta = {"name": name, "namespace": namespace} if namespace else {"name": name}
        create_if_absent({"apiVersion": "kopf.dev/v1", "kind": kind, "metadata": meta})


def get(
    api_version: str, kind: str, namespace: str, name: str, plural: str | None = None
) -> dict[str, Any] | None:
    try:
        return _call("GET", _path(api_version, kind, namespace, name, plural))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def delete(api_version: str, kind: str, namespace: str, name: str) -> None:
    """Delete in the background (dependents go through the garbage collector); gone is done."""
    try:
        _call(
            "DELETE",
            _path(api_version, kind, namespace, name),
            body={"propagationPolicy": "Background"},
        )
    except ApiError as exc:
        if exc.status != 404:
            raise


def post_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A core/v1 Event about ``obj``, as `kubectl describe` shows them. kopf.event needs
    kopf's handler context, which the analysis clock's threads do not have."""
    meta = obj["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _call(
        "POST",
        _path("v1", "Event", meta["namespace"], plural="events"),
        body={
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        },
    )


def patch_metadata(plural: str, namespace: str, name: str, metadata: dict[str, Any]) -> None:
    """Merge-patch a modelsmith resource's metadata (a null value removes a key)."""
    _call(
        "PATCH",
        _path(f"{GROUP}/{VERSION}", "", namespace, name, plural),
        body={"metadata": metadata},
        content_type="application/merge-patch+json",
    )


def list_(api_version: str, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    result = _call(
        "GET",
        _path(api_version, kind, namespace),
        query=[("labelSelector", selector)],
    )
    return cast(list[dict[str, Any]], result.get("items", []))


def list_custom(plural: str, namespace: str) -> list[dict[str, Any]]:
    """All modelsmith resources of one kind in a namespace."""
    result = _call("GET", _path(f"{GROUP}/{VERSION}", "", namespace, plural=plural))
    return cast(list[dict[str, Any]], result.get("items", []))


def review_token(token: str, audience: str) -> dict[str, Any] | None:
    """The TokenReview status of ``token`` for ``audience``; None if it is not valid."""
    review = _call(
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        },
    )
    status = cast(dict[str, Any], review.get("status", {}))
    if not status.get("authenticated") or audience not in status.get("audiences", []):
        return None
    return status


def merge_status(plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch part of a status with no precondition: for fields one writer owns."""
    _call(
        "PATCH",
        _path(f"{GROUP}/{VERSION}", "", namespace, name, plural) + "/status",
        body={"status": status},
        content_type="application/merge-patch+json",
    )


def patch_status(
    plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str
) -> dict[str, Any]:
    """Merge-patch a modelsmith resource's status (lists are replaced whole); 409 when the
    resource is no longer at ``resource_version``."""
    return _call(
        "PATCH",
        _path(f"{GROUP}/{VERSION}", "", namespace, name, plural) + "/status",
        body={"metadata": {"resourceVersion": resource_version}, "status": status},
        content_type="application/merge-patch+json",
    )
