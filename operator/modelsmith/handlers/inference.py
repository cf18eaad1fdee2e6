"""kopf handlers of InferenceService: gather inputs, let `rollout.plan` decide, apply.

Reconciles come from three places: the resource's own events, its server Deployments'
readiness changes, and a wake-up clock for analyses that are due (no kopf timer: kopf
puts a finalizer on every object with one, which blocks namespace deletion whenever the
operator is down). Every reconcile re-reads the Deployments and the status, so a
restarted operator carries on a rollout where the last one left it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from modelsmith import k8s, metrics, storagecheck
from modelsmith.api.canary import Decision
from modelsmith.api.common import Phase
from modelsmith.api.inference import (
    INFERENCESERVICE,
    Backend,
    InferenceServiceSpec,
    InferenceServiceStatus,
    ServingPhase,
)
from modelsmith.api.meta import GROUP, VERSION, ConditionStatus
from modelsmith.batchkinds import PLURALS
from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import (
    Revision,
    revision_name,
)
from modelsmith.canary.analysis import Target, gather
from modelsmith.canary.decision import Policy
from modelsmith.canary.rollout import Inputs, next_wake, plan
from modelsmith.conditions import ConditionType, Reason, set_condition
from modelsmith.config import Settings
from modelsmith.handlers import fresh, preflight, revisions
from modelsmith.memo import MEMORY
from modelsmith.refs import resolve, waiting_reason
from modelsmith.storagecheck import Refusal
from modelsmith.validation import uri_fields

log = logging.getLogger(__name__)
KIND = INFERENCESERVICE.kind
PLURAL = INFERENCESERVICE.plural
DECISION_ANNOTATION = f"{GROUP}/canary-decision"
"""`kubectl annotate misvc NAME modelsmith.io/canary-decision=Promote` (or Abort): acted
on once, then removed, so it cannot promote the next rollout by accident."""


NOT_SERVING_RESYNC_S = 10.0
"""While nothing serves, reconcile this often: a crash-looping server pod changes no
Deployment, so no event would carry its reason into Ready."""


def _decision(body: kopf.Body, spec: InferenceServiceSpec) -> Decision:
    raw = (body["metadata"].get("annotations") or {}).get(DECISION_ANNOTATION)
    if raw in (Decision.PROMOTE, Decision.ABORT):
        return Decision(raw)
    return spec.canary.decision if spec.canary else Decision.AUTO


def _reject(body: kopf.Body, current: InferenceServiceStatus, message: str) -> NoReturn:
    fresh.reject(
        PLURAL,
        body,
        current,
        message,
        phase=ServingPhase.FAILED,
        conditions=((ConditionType.READY, ConditionStatus.FALSE),),
        now=datetime.now(UTC),
    )


def _preflight(
    owner: Owner, spec: InferenceServiceSpec, model_uri: str, settings: Settings
) -> Refusal | None:
    """A new revision's claim and Secret, before its first server pod."""
    ref = spec.storage.secret_ref
    secret = storagecheck.secret_for(
        ref.name if ref else None,
        settings,
        service_account=spec.service_account_name,
        uris=[model_uri],
    )
    return preflight.check(owner.namespace, None, [model_uri], secret, pods=1)


def _blocked(
    current: InferenceServiceStatus, refusal: Refusal, gen: int, now: datetime
) -> InferenceServiceStatus:
    """The new revision is not made; a revision already serving goes on serving."""
    conds = set_condition(
        list(current.conditions),
        ConditionType.READY,
        ConditionStatus.FALSE,
        reason=refusal.reason,
        message=f"the model: {refusal.message}",
        now=now,
        generation=gen,
    )
    update: dict[str, Any] = {"conditions": conds, "observed_generation": gen}
    if current.stable_revision is None:
        update["phase"] = ServingPhase.PENDING
    return current.model_copy(update=update)


def reconcile(body: kopf.Body, settings: Settings) -> float | None:
    """One pass; returns seconds until the next pass that no event will trigger."""
    meta, gen = body["metadata"], int(body["metadata"].get("generation", 1))
    current = InferenceServiceStatus.model_validate(dict(body.get("status", {}) or {}))
    try:
        spec = InferenceServiceSpec.model_validate(dict(body["spec"]))
    except ValidationError as exc:
        _reject(body, current, str(exc))
    problems = INFERENCESERVICE.name_errors(meta["name"])
    problems += storagecheck.spec_errors(settings, uri_fields(spec))
    if problems:
        _reject(body, current, "; ".join(problems))
    owner = Owner(KIND, meta["name"], meta["namespace"], meta["uid"])
    now = datetime.now(UTC)

    def fetch(kind: str, name: str) -> dict[str, Any] | None:
        return k8s.get(f"{GROUP}/{VERSION}", kind, owner.namespace, name, plural=PLURALS[kind])

    resolution = resolve({"model": spec.model}, fetch)
    if not resolution.ready:
        why, message = waiting_reason(resolution)
        conds = set_condition(
            list(current.conditions),
            ConditionType.READY,
            ConditionStatus.FALSE,
            reason=why,
            message=f"the model: {message}",
            now=now,
            generation=gen,
        )
        update = {"conditions": conds, "observed_generation": gen}
        if current.stable_revision is None:
            # Nothing serves yet: a failed upstream will never deliver a model.
            failed = why == Reason.UPSTREAM_FAILED
            update["phase"] = ServingPhase.FAILED if failed else ServingPhase.PENDING
        fresh.write_status(PLURAL, body, current.model_copy(update=update))
        return None
    model_uri = resolution.uris["model"]
    desired = Revision(
        revision_name(owner.name, spec, model_uri), spec, model_uri, resolution.sizes.get("model")
    )
    kserve = spec.traffic.backend == Backend.KSERVE
    deployments = {} if kserve else revisions.revision_deployments(owner)
    if desired.name not in deployments and desired.name != current.stable_revision:
        refusal = _preflight(owner, spec, model_uri, settings)
        if refusal is not None:
            fresh.write_status(PLURAL, body, _blocked(current, refusal, gen, now))
            return preflight.RETRY_SECONDS
    ready = (
        revisions.kserve_ready(owner, current, desired.name)
        if kserve
        else {rev: revisions.available(d) for rev, d in deployments.items()}
    )
    decision = _decision(body, spec)
    policy = Policy.of(spec)
    samples, queries = gather(
        settings.prometheus_url,
        Target(owner.namespace, owner.name),
        spec,
        current,
        desired.name,
        ready=ready.get(desired.name, False),
        now=now,
        policy=policy,
    )
    result = plan(
        Inputs(
            spec,
            desired.name,
            model_uri,
            ready,
            samples,
            queries,
            decision,
            now,
            gen,
            failing={} if kserve else revisions.failing(owner, ready),
            model_version=resolution.versions.get("model"),
            policy=policy,
        ),
        current,
    )
    # Status first, under the resourceVersion read: a reconcile that lost the race fails
    # here, before it could push an older split to the router.
    url = revisions.url(owner, spec)
    fresh.write_status(PLURAL, body, result.status.model_copy(update={"url": url}))
    metrics.observe_canary(owner.namespace, owner.name, current.canary, result.status.canary, now)
    for revision in [] if kserve else result.live:
        rev = desired if revision == desired.name else revisions.snapshot(owner, revision)
        if rev is not None:
            revisions.apply_revision(
                owner, rev, spec, settings, scaled=revision == result.scaled_down
            )
    revisions.apply_traffic(owner, spec, result, desired, settings)
    for revision in set(deployments) - set(result.live):
        revisions.delete_revision(owner, revision)
    for type_, reason, message in result.events:
        fresh.event(body, type_, reason, message)
    if decision != Decision.AUTO and DECISION_ANNOTATION in (meta.get("annotations") or {}):
        k8s.patch_metadata(
            PLURAL, owner.namespace, owner.name, {"annotations": {DECISION_ANNOTATION: None}}
        )
    wake = next_wake(result.status, policy, now)
    if result.status.phase == ServingPhase.PENDING and not kserve:
        wake = min(wake or NOT_SERVING_RESYNC_S, NOT_SERVING_RESYNC_S)
    return wake


_WAKE: dict[tuple[str, str], float] = {}
"""(namespace, name) -> monotonic time a rollout's next analysis is due."""


def _measured(body: kopf.Body, settings: Settings) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    with metrics.reconcile_observed(KIND, stale=(fresh.StaleReadError,)):
        wake = reconcile(body, settings)
    if wake is None:
        _WAKE.pop(key, None)
    else:
        _WAKE[key] = time.monotonic() + wake


def _reconcile_fresh(
    namespace: str, name: str, settings: Settings, first: kopf.Body | None = None
) -> fresh.Outcome:
    """Three paths reach here (the resource's events, its Deployments', the clock)."""
    target = fresh.Target(KIND, PLURAL, namespace, name)
    outcome = fresh.reconcile_fresh(target, lambda b: _measured(b, settings), first=first)
    if outcome == fresh.Outcome.GONE:
        _WAKE.pop((namespace, name), None)
        metrics.forget_canary(namespace, name)
    return outcome


_READY_SEEN = MEMORY.memo("deployment-ready", bool)
"""server Deployment uid -> whether it was available when last acted on."""


def register(settings: Settings) -> None:
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.resume(*resource)
    @kopf.on.create(*resource)
    @kopf.on.update(*resource, field="spec")
    def on_change(body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        _reconcile_fresh(meta["namespace"], meta["name"], settings, first=body)

    @kopf.on.event(*resource)
    def on_event(body: kopf.Body, type: str | None, **_: Any) -> None:
        """Metrics from the status as stored, whoever wrote it; a delete removes them."""
        meta, status = body["metadata"], body.get("status") or {}
        if type == "DELETED":
            metrics.forget_resource(meta["uid"])
            metrics.forget_canary(meta["namespace"], meta["name"])
            return
        metrics.observe_phase(KIND, meta["namespace"], meta["uid"], status.get("phase"))
        metrics.set_canary_weight(meta["namespace"], meta["name"], status.get("canaryWeight"))

    @kopf.on.event(*resource, annotations={DECISION_ANNOTATION: kopf.PRESENT})
    def on_decision(body: kopf.Body, type: str | None, **_: Any) -> None:
        """A manual Promote/Abort. An event handler, not on.update: kopf leaves
        annotations under its own storage prefix (modelsmith.io/) out of the diffs it
        compares, so an update handler would never see this one change."""
        if type != "DELETED":
            _reconcile_fresh(body["metadata"]["namespace"], body["metadata"]["name"], settings)

    @kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/component": "server"})
    def on_deployment(body: kopf.Body, type: str | None, **_: Any) -> None:
        """A revision became ready (or stopped being): the rollout may move now."""
        uid = body["metadata"]["uid"]
        if type == "DELETED":
            MEMORY.forget(uid)
            return
        name = (body["metadata"].get("labels") or {}).get(revisions.OWNER_LABEL)
        if name is None or not _READY_SEEN.changed(uid, revisions.available(dict(body))):
            return
        _reconcile_fresh(body["metadata"]["namespace"], name, settings)

    for upstream in ("pretrainjobs", "finetunes", "quantizejobs"):

        @kopf.on.event(GROUP, VERSION, upstream)
        def on_upstream(body: kopf.Body, type: str | None, **_: Any) -> None:
            """A model an InferenceService waits for was published (serve it now), or
            will never be (say so). Argo CD applies a chain in no particular order."""
            phase = (body.get("status") or {}).get("phase")
            if type == "DELETED" or phase not in (Phase.SUCCEEDED, Phase.FAILED):
                return
            namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
            for obj in k8s.list_custom(PLURAL, namespace):
                ref = (obj.get("spec", {}).get("model") or {}).get("fromRef") or {}
                if (ref.get("kind"), ref.get("name")) == (body["kind"], name):
                    _reconcile_fresh(namespace, obj["metadata"]["name"], settings)

    @kopf.on.startup()
    async def start_clock(**_: Any) -> None:
        asyncio.get_running_loop().create_task(_clock(settings))


async def _clock(settings: Settings) -> None:
    """Run the analyses that are due; one at a time, off the event loop."""
    while True:
        await asyncio.sleep(0.25)
        now = time.monotonic()
        for (namespace, name), due in list(_WAKE.items()):
            if due <= now:
                _WAKE.pop((namespace, name), None)
                try:
                    await asyncio.to_thread(_reconcile_fresh, namespace, name, settings)
                except Exception:
                    log.exception("canary analysis of %s/%s failed", namespace, name)
                    _WAKE[(namespace, name)] = time.monotonic() + 5
