"""kopf handlers for DataPipeline: parse, build, apply, observe, write status.

Reconcile is level-based: the same function runs on create, on spec change, on
operator restart and on a timer, and each time re-reads the Job as it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from modelsmith import k8s
from modelsmith.api.common import BatchStatus
from modelsmith.api.datapipeline import DATAPIPELINE, DataPipelineSpec
from modelsmith.api.meta import GROUP, VERSION, ConditionStatus
from modelsmith.builders.datapipeline import Owner, desired_configmap, desired_job, job_name
from modelsmith.conditions import Reason, set_condition
from modelsmith.config import Settings
from modelsmith.jobstatus import compute_status

RESOURCE = (GROUP, VERSION, DATAPIPELINE.plural)
RESYNC_SECONDS = 5.0


def _status_patch(old: dict[str, Any], new: BatchStatus) -> dict[str, Any]:
    """Only the fields that changed, so an unchanged world writes nothing."""
    rendered = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {k: v for k, v in rendered.items() if old.get(k) != v}


def reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, settings: Settings) -> None:
    meta, generation = body["metadata"], int(body["metadata"].get("generation", 1))
    old_status = dict(body.get("status", {}) or {})
    current = BatchStatus.model_validate(old_status)
    try:
        spec = DataPipelineSpec.model_validate(dict(body["spec"]))
    except ValidationError as exc:
        now = datetime.now(UTC)
        conds = set_condition(
            list(current.conditions),
            "Ready",
            ConditionStatus.FALSE,
            reason=Reason.INVALID_SPEC,
            message=str(exc),
            now=now,
            generation=generation,
        )
        invalid = current.model_copy(
            update={"conditions": conds, "observed_generation": generation}
        )
        patch.status.update(_status_patch(old_status, invalid))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc

    owner = Owner(DATAPIPELINE.kind, meta["name"], meta["namespace"], meta["uid"])
    k8s.apply(desired_configmap(owner, spec))
    k8s.apply(desired_job(owner, spec, settings))
    job = k8s.get("batch/v1", "Job", owner.namespace, job_name(owner))
    new = compute_status(
        current, job, generation=generation, output_uri=spec.output.uri, now=datetime.now(UTC)
    )
    changed = _status_patch(old_status, new)
    if changed:
        logger.info(f"status: phase={new.phase}")
        patch.status.update(changed)


def register(settings: Settings) -> None:
    @kopf.on.resume(*RESOURCE)
    @kopf.on.create(*RESOURCE)
    @kopf.on.update(*RESOURCE, field="spec")
    def on_change(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        reconcile(body, patch, logger, settings)

    @kopf.timer(*RESOURCE, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
    def resync(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        if body.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        reconcile(body, patch, logger, settings)
