"""The endpoint workload pods report progress to, so status.progress moves mid-run.

A pod proves who it is with a projected ServiceAccount token for our audience (checked
by a TokenReview); the token names the pod, the pod's Job names the resource. So a pod
needs no RBAC, cannot write another run's status, and the operator needs no network
path into pods (Kubeflow Trainer's status server works the same way).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelsmith import k8s
from modelsmith.api.common import BatchStatus
from modelsmith.api.meta import GROUP, VERSION
from modelsmith.batchkinds import PLURALS, batch_owner
from modelsmith.config import STATUS_AUDIENCE
from modelsmith.jobstatus import with_eta

log = logging.getLogger(__name__)
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"


class ProgressReport(BaseModel):
    model_config = ConfigDict(extra="ignore")

    step: int = Field(ge=0)
    total: int | None = Field(default=None, ge=1)


def _first(extra: dict[str, Any], key: str) -> str | None:
    values = extra.get(key) or []
    return str(values[0]) if values else None


def _owner_of(identity: dict[str, Any]) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the modelsmith resource whose pod holds the token."""
    username = str(identity.get("user", {}).get("username", ""))
    extra = identity.get("user", {}).get("extra", {}) or {}
    pod_name, pod_uid = _first(extra, POD_NAME), _first(extra, POD_UID)
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not pod_name:
        return None
    namespace = parts[2]
    pod = k8s.get("v1", "Pod", namespace, pod_name)
    if pod is None or pod["metadata"].get("uid") != pod_uid:
        return None
    job_name = pod["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
    job = k8s.get("batch/v1", "Job", namespace, job_name) if job_name else None
    owner = batch_owner(job["metadata"]) if job else None
    return (owner[0].info.kind, namespace, owner[1]["name"]) if owner else None


def _record(kind: str, namespace: str, name: str, report: ProgressReport) -> None:
    obj = k8s.get(f"{GROUP}/{VERSION}", kind, namespace, name, PLURALS[kind])
    if obj is None:
        return
    status = BatchStatus.model_validate(obj.get("status", {}) or {})
    progress = with_eta(report.step, report.total, status.start_time, datetime.now(UTC))
    rendered = progress.model_dump(mode="json", by_alias=True, exclude_none=True)
    k8s.merge_status(PLURALS[kind], namespace, name, {"progress": rendered})


def _handle_sync(token: str, payload: Any) -> web.Response:
    identity = k8s.review_token(token, STATUS_AUDIENCE)
    if identity is None:
        return web.json_response({"error": "token not valid for " + STATUS_AUDIENCE}, status=401)
    try:
        report = ProgressReport.model_validate(payload)
    except ValidationError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    owner = _owner_of(identity)
    if owner is None:
        return web.json_response({"error": "the token's pod runs no modelsmith job"}, status=403)
    _record(*owner, report)
    return web.Response(status=204)


async def _progress(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return web.json_response({"error": "missing bearer token"}, status=401)
    try:
        payload = await request.json()
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            None, _handle_sync, header.removeprefix("Bearer "), payload
        )
    except k8s.ApiError as exc:
        log.warning("progress report failed: %s", exc)
        return web.json_response({"error": "the operator could not record it"}, status=503)


async def serve(host: str, port: int) -> web.AppRunner:
    """Start serving POST /v1/progress on the running event loop."""
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/v1/progress", _progress)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
