"""One batch run whose inputs are there: check storage, apply its children, observe it.

Split from the handlers so that what a reconcile does once it may act (and the memo of
what it applied) reads on its own; `handlers/batch.py` decides when to call it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import kopf

from modelsmith import k8s, storagecheck
from modelsmith.api.common import BatchStatus, Phase, WorkloadSpec
from modelsmith.api.meta import ConditionStatus
from modelsmith.batchkinds import BatchKind
from modelsmith.builders.batch import (
    desired_configmap,
    desired_job,
    desired_ray_token,
    desired_service,
    job_name,
    task_config,
)
from modelsmith.builders.owner import Owner
from modelsmith.conditions import ConditionType, Reason, set_condition
from modelsmith.config import Settings
from modelsmith.handlers import fresh, preflight
from modelsmith.jobstatus import PodReport, blocked_status, compute_status, summarize_pods
from modelsmith.memo import MEMORY
from modelsmith.refs import Resolution
from modelsmith.storagecheck import Refusal
from modelsmith.validation import uri_fields


def _pod_report(namespace: str, job: dict[str, Any] | None) -> PodReport | None:
    """Read the pods once some pod has finished (termination messages) or while some
    active pod is not ready (it may be unable to start); otherwise the Job says it all."""
    status = (job or {}).get("status", {}) or {}
    finished = status.get("succeeded") or status.get("failed")
    unready = int(status.get("active", 0) or 0) > int(status.get("ready", 0) or 0)
    if job is None or not (finished or unready):
        return None
    selector = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
    return summarize_pods(k8s.list_("v1", "Pod", namespace, selector))


_APPLIED = MEMORY.memo("applied", str)
"""uid of an owner -> digest of the children last applied for it, by this process."""


def _apply_children(
    owner: Owner, children: list[dict[str, Any]], once: Sequence[dict[str, Any]] = ()
) -> dict[str, Any] | None:
    """Apply the children unless this process already applied exactly these and the Job
    still exists; return the Job as the API server has it. `once` are created before
    them if absent and never changed (generated secrets), outside the digest.

    A no-op server-side apply still costs a request per child: at 200 resources that
    was most of the operator's traffic. After a restart the memo is empty, so every
    resource is applied once again, which is what level-based reconciliation needs.
    """
    digest = hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()
    name = job_name(owner)
    previous = _APPLIED.get(owner.uid)
    if previous == digest:
        job = k8s.get("batch/v1", "Job", owner.namespace, name)
        if job is not None:
            return job
    # First apply: the ConfigMap before the Job, so no pod starts without its config. A
    # spec change: the Job first, so that if the API server refuses it (a running Job's
    # pods are immutable) the ConfigMap does not change under pods still running, or
    # about to be retried, with the old spec.
    if previous is None:
        for obj in once:
            k8s.create_if_absent(obj)
    job_manifest, others = children[-1], children[:-1]
    ordered = [*others, job_manifest] if previous is None else [job_manifest, *others]
    applied = {child["kind"]: k8s.apply(child) for child in ordered}
    _APPLIED.put(owner.uid, digest)
    return applied["Job"]


def _mark_rejected_change(
    new: BatchStatus,
    current: BatchStatus,
    rejected: str | None,
    *,
    generation: int,
    now: datetime,
) -> BatchStatus:
    """A spec change the running Job cannot take is a condition, not a crash loop.

    The run goes on with the spec it started with; observedGeneration stays behind
    metadata.generation, which is how `kubectl wait` and Argo CD see "not applied".
    """
    if rejected is None and not any(c.type == ConditionType.DEGRADED for c in new.conditions):
        return new
    if rejected is None:
        status, reason, message = ConditionStatus.FALSE, Reason.SPEC_APPLIED, ""
    else:
        status, reason = ConditionStatus.TRUE, Reason.SPEC_CHANGE_REJECTED
        message = (
            f"this spec change cannot be applied to the running Job ({rejected}); the run "
            "goes on with its previous spec. Revert the change, or delete and recreate the "
            "resource to run with it"
        )
    conds = set_condition(
        list(new.conditions),
        ConditionType.DEGRADED,
        status,
        reason=reason,
        message=message,
        now=now,
        generation=generation,
    )
    update: dict[str, Any] = {"conditions": conds}
    if rejected is not None:
        update["observed_generation"] = current.observed_generation
    return new.model_copy(update=update)


_INVALID = (
    (ConditionType.READY, ConditionStatus.FALSE),
    (ConditionType.FAILED, ConditionStatus.TRUE),
)


def reject(
    kind: BatchKind, body: kopf.Body, current: BatchStatus, message: str, *, now: datetime
) -> NoReturn:
    plural = kind.info.plural
    fresh.reject(plural, body, current, message, phase=Phase.FAILED, conditions=_INVALID, now=now)


class RefusedError(Exception):
    """No Job was created, for a reason the status now shows; ``retry`` after a delay."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def refuse(
    kind: BatchKind,
    body: kopf.Body,
    current: BatchStatus,
    refusal: Refusal,
    *,
    generation: int,
    now: datetime,
) -> NoReturn:
    """Say in status why no Job exists (a Warning event when it first happens), then stop."""
    blocked = blocked_status(
        current, generation=generation, now=now, reason=refusal.reason, message=refusal.message
    )
    if fresh.write_status(kind.info.plural, body, blocked):
        fresh.event(body, "Warning", str(refusal.reason), refusal.message)
    raise RefusedError(refusal)


def run(
    kind: BatchKind,
    body: kopf.Body,
    current: BatchStatus,
    spec: WorkloadSpec,
    resolution: Resolution,
    *,
    settings: Settings,
    generation: int,
    now: datetime,
) -> BatchStatus:
    """Inputs are there: check storage, apply the children, read back how the run is."""
    meta = body["metadata"]
    owner = Owner(kind.info.kind, meta["name"], meta["namespace"], meta["uid"])
    layout = kind.layout(spec)
    fields = uri_fields(spec)
    artifacts = storagecheck.artifacts(owner, spec, settings, resolution.uris, fields)
    if artifacts is None:
        missing = storagecheck.not_configured(owner.kind)
        refuse(kind, body, current, missing, generation=generation, now=now)
    output_uri = artifacts.output
    overlap = storagecheck.nested_output(output_uri, artifacts.reads)
    if overlap:
        reject(kind, body, current, "; ".join(overlap), now=now)
    if owner.uid not in _APPLIED and current.phase in (None, Phase.PENDING):
        refusal = preflight.check(
            owner.namespace, artifacts.output, artifacts.reads, artifacts.secret, layout.workers
        )
        if refusal is not None:
            refuse(kind, body, current, refusal, generation=generation, now=now)
    config = task_config(owner, spec, resolution.uris, output_uri)
    children = [
        desired_configmap(owner, layout, config),
        desired_service(owner, layout),
        desired_job(owner, spec, layout, settings, artifacts),
    ]
    token = desired_ray_token(owner, layout, secrets.token_urlsafe(32))
    rejected: str | None = None
    try:
        job = _apply_children(
            owner, [c for c in children if c is not None], [token] if token else []
        )
    except k8s.ApiError as exc:
        if exc.status != 422:
            raise
        rejected = exc.message
        job = k8s.get("batch/v1", "Job", owner.namespace, job_name(owner))
    new = compute_status(
        current,
        job,
        generation=generation,
        output_uri=output_uri,
        now=now,
        pods=_pod_report(owner.namespace, job),
    ).model_copy(update={"lineage": resolution.lineage})
    return _mark_rejected_change(new, current, rejected, generation=generation, now=now)
