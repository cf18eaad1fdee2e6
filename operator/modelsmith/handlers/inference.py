"""kopf handlers of InferenceService: gather inputs, let `rollout.plan` decide, apply.

Reconciles come from three places: the resource's own events, its server Deployments'
readiness changes, and a wake-up clock for analyses that are due (no kopf timer: kopf
puts a finalizer on every object with one, which blocks namespace deletion whenever the
operator is down). Every reconcile re-reads the Deployments and the status, so a
restarted operator carries on a rollout where the last one left it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, NoReturn, cast

import kopf
from pydantic import ValidationError

from modelsmith import jobstatus, k8s, mergepatch, metrics, storagecheck
from modelsmith.api.common import Phase
from modelsmith.api.inference import (
    INFERENCESERVICE,
    Backend,
    Decision,
    InferenceServiceSpec,
    InferenceServiceStatus,
    ServingPhase,
)
from modelsmith.api.meta import GROUP, VERSION, ConditionStatus
from modelsmith.batchkinds import PLURALS
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
    revision_name,
)
from modelsmith.builders.router import desired_router, desired_routes_configmap, route_table
from modelsmith.builders.traffic import desired_httproute, desired_kserve
from modelsmith.canary.analysis import Target, gather
from modelsmith.canary.rollout import Inputs, Plan, next_wake, plan
from modelsmith.conditions import ConditionType, Reason, set_condition
from modelsmith.config import Settings
from modelsmith.contract import TASK_CONFIG_KEY, TaskConfig
from modelsmith.handlers import preflight
from modelsmith.refs import resolve, waiting_reason
from modelsmith.storagecheck import Refusal
from modelsmith.validation import uri_fields

log = logging.getLogger(__name__)
KIND = INFERENCESERVICE.kind
PLURAL = INFERENCESERVICE.plural
DECISION_ANNOTATION = f"{GROUP}/canary-decision"
"""`kubectl annotate misvc NAME modelsmith.io/canary-decision=Promote` (or Abort): acted
on once, then removed, so it cannot promote the next rollout by accident."""
_OWNER_LABEL = f"{GROUP}/{KIND.lower()}"


class StaleReadError(Exception):
    """The resource changed since it was read; reconcile again from a fresh read."""


def _available(deployment: dict[str, Any]) -> bool:
    want = max(int(deployment.get("spec", {}).get("replicas", 1) or 0), 1)
    status = deployment.get("status", {}) or {}
    return int(status.get("availableReplicas", 0) or 0) >= want


def _revision_deployments(owner: Owner) -> dict[str, dict[str, Any]]:
    selector = f"{_OWNER_LABEL}={owner.name},app.kubernetes.io/component=server"
    found = k8s.list_("apps/v1", "Deployment", owner.namespace, selector)
    return {d["metadata"]["labels"][REVISION_LABEL]: d for d in found}


NOT_SERVING_RESYNC_S = 10.0
"""While nothing serves, reconcile this often: a crash-looping server pod changes no
Deployment, so no event would carry its reason into Ready."""


def _failing(owner: Owner, ready: dict[str, bool]) -> dict[str, str]:
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


def _kserve_ready(owner: Owner, current: InferenceServiceStatus, desired: str) -> dict[str, bool]:
    """KServe's Ready condition, credited to the revision its object was last written for."""
    obj = k8s.get("serving.kserve.io/v1beta1", "InferenceService", owner.namespace, owner.name)
    if obj is None:
        return {}
    conds = (obj.get("status") or {}).get("conditions") or []
    ok = any(c.get("type") == ConditionType.READY and c.get("status") == "True" for c in conds)
    written = (obj["metadata"].get("annotations") or {}).get(REVISION_LABEL)
    ready = {current.stable_revision: True} if current.stable_revision else {}
    if written == desired:
        ready[desired] = ok
    return ready


def _snapshot(owner: Owner, revision: str) -> Revision | None:
    """A revision as it was made, from its own ConfigMap (the spec has moved on)."""
    cm = k8s.get("v1", "ConfigMap", owner.namespace, revision)
    if cm is None:
        return None
    config = TaskConfig.model_validate(json.loads(cm["data"][TASK_CONFIG_KEY]))
    spec = InferenceServiceSpec.model_validate(config.spec)
    size = (cm["metadata"].get("annotations") or {}).get(MODEL_BYTES_ANNOTATION)
    return Revision(revision, spec, config.inputs["model"], int(size) if size else None)


def _decision(body: kopf.Body, spec: InferenceServiceSpec) -> Decision:
    raw = (body["metadata"].get("annotations") or {}).get(DECISION_ANNOTATION)
    if raw in (Decision.PROMOTE, Decision.ABORT):
        return Decision(raw)
    return spec.canary.decision if spec.canary else Decision.AUTO


def _apply_revision(
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


def _url(owner: Owner, spec: InferenceServiceSpec) -> str:
    if spec.traffic.backend == Backend.GATEWAY_API and spec.traffic.gateway_ref is not None:
        return f"gateway {spec.traffic.gateway_ref.name}, HTTPRoute {owner.name}"
    return f"http://{owner.name}.{owner.namespace}.svc"


def _apply_traffic(
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


def _delete_revision(owner: Owner, revision: str) -> None:
    for api_version, kind in (
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
    ):
        k8s.delete(api_version, kind, owner.namespace, revision)


def _write_status(body: kopf.Body, old: dict[str, Any], new: InferenceServiceStatus) -> None:
    rendered = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    changed = mergepatch.diff(old, rendered)
    if not changed:
        return
    meta = body["metadata"]
    try:
        k8s.patch_status(PLURAL, meta["namespace"], meta["name"], changed, meta["resourceVersion"])
    except k8s.ApiError as exc:
        if exc.status == 409:
            raise StaleReadError(f"{KIND} {meta['name']} changed meanwhile") from exc
        raise


def _reject(body: kopf.Body, current: InferenceServiceStatus, message: str, gen: int) -> NoReturn:
    now = datetime.now(UTC)
    conds = set_condition(
        list(current.conditions),
        ConditionType.READY,
        ConditionStatus.FALSE,
        reason=Reason.INVALID_SPEC,
        message=message,
        now=now,
        generation=gen,
    )
    new = current.model_copy(
        update={"conditions": conds, "observed_generation": gen, "phase": ServingPhase.FAILED}
    )
    _write_status(body, dict(body.get("status", {}) or {}), new)
    k8s.post_event(dict(body), "Warning", str(Reason.INVALID_SPEC), message)
    raise kopf.PermanentError(f"invalid spec: {message}")


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
    old = dict(body.get("status", {}) or {})
    current = InferenceServiceStatus.model_validate(old)
    try:
        spec = InferenceServiceSpec.model_validate(dict(body["spec"]))
    except ValidationError as exc:
        _reject(body, current, str(exc), gen)
    problems = INFERENCESERVICE.name_errors(meta["name"])
    problems += storagecheck.spec_errors(settings, uri_fields(spec))
    if problems:
        _reject(body, current, "; ".join(problems), gen)
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
        _write_status(body, old, current.model_copy(update=update))
        return None
    model_uri = resolution.uris["model"]
    desired = Revision(
        revision_name(owner.name, spec, model_uri), spec, model_uri, resolution.sizes.get("model")
    )
    kserve = spec.traffic.backend == Backend.KSERVE
    deployments = {} if kserve else _revision_deployments(owner)
    if desired.name not in deployments and desired.name != current.stable_revision:
        refusal = _preflight(owner, spec, model_uri, settings)
        if refusal is not None:
            _write_status(body, old, _blocked(current, refusal, gen, now))
            return preflight.RETRY_SECONDS
    ready = (
        _kserve_ready(owner, current, desired.name)
        if kserve
        else {rev: _available(d) for rev, d in deployments.items()}
    )
    decision = _decision(body, spec)
    samples, queries = gather(
        settings.prometheus_url,
        Target(owner.namespace, owner.name),
        spec,
        current,
        desired.name,
        ready=ready.get(desired.name, False),
        now=now,
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
            failing={} if kserve else _failing(owner, ready),
        ),
        current,
    )
    # Status first, under the resourceVersion read: a reconcile that lost the race fails
    # here, before it could push an older split to the router.
    url = _url(owner, spec)
    _write_status(body, old, result.status.model_copy(update={"url": url}))
    metrics.observe_canary(owner.namespace, owner.name, current.canary, result.status.canary, now)
    for revision in [] if kserve else result.live:
        rev = desired if revision == desired.name else _snapshot(owner, revision)
        if rev is not None:
            _apply_revision(owner, rev, spec, settings, scaled=revision == result.scaled_down)
    _apply_traffic(owner, spec, result, desired, settings)
    for revision in set(deployments) - set(result.live):
        _delete_revision(owner, revision)
    for type_, reason, message in result.events:
        k8s.post_event(dict(body), type_, reason, message)
    if decision != Decision.AUTO and DECISION_ANNOTATION in (meta.get("annotations") or {}):
        k8s.patch_metadata(
            PLURAL, owner.namespace, owner.name, {"annotations": {DECISION_ANNOTATION: None}}
        )
    wake = next_wake(result.status, spec, now)
    if result.status.phase == ServingPhase.PENDING and not kserve:
        wake = min(wake or NOT_SERVING_RESYNC_S, NOT_SERVING_RESYNC_S)
    return wake


_WAKE: dict[tuple[str, str], float] = {}
"""(namespace, name) -> monotonic time a rollout's next analysis is due."""


def _measured(body: kopf.Body, settings: Settings) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    try:
        with metrics.reconcile_observed(KIND, stale=(StaleReadError,)):
            wake = reconcile(body, settings)
    except StaleReadError as exc:
        raise kopf.TemporaryError(str(exc), delay=0.5) from exc
    if wake is None:
        _WAKE.pop(key, None)
    else:
        _WAKE[key] = time.monotonic() + wake


STALE_RETRY_S = 1.0
"""After three stale reads in a row, the clock reconciles again this much later."""

_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _reconcile_fresh(namespace: str, name: str, settings: Settings) -> None:
    """Reconcile from a fresh read, one at a time per resource.

    Three paths reach here (the resource's events, its Deployments', the clock); run
    concurrently, a slower one could act on a status another has already moved on.
    PermanentError (invalid spec) propagates: kopf records it and stops retrying.
    If all three reads lose the race, the clock tries again in a second: the event
    handlers among the callers are never retried, so giving up here would leave the
    resource waiting for an event that may not come.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault((namespace, name), threading.Lock())
    with lock:
        for _attempt in range(3):
            obj = k8s.get(f"{GROUP}/{VERSION}", KIND, namespace, name, PLURAL)
            if obj is None:
                _WAKE.pop((namespace, name), None)
                _LOCKS.pop((namespace, name), None)
                metrics.forget_canary(namespace, name)
                return
            try:
                _measured(kopf.Body(cast(kopf.RawBody, obj)), settings)
                return
            except kopf.TemporaryError:
                continue
        log.warning("%s/%s: status moved under three reads in a row; again in 1 s", namespace, name)
        _WAKE[(namespace, name)] = time.monotonic() + STALE_RETRY_S


_READY_SEEN: dict[str, bool] = {}


def register(settings: Settings) -> None:
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.resume(*resource)
    @kopf.on.create(*resource)
    @kopf.on.update(*resource, field="spec")
    def on_change(body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        _reconcile_fresh(meta["namespace"], meta["name"], settings)

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
            meta = body["metadata"]
            try:
                _reconcile_fresh(meta["namespace"], meta["name"], settings)
            except kopf.PermanentError:
                return

    @kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/component": "server"})
    def on_deployment(body: kopf.Body, type: str | None, **_: Any) -> None:
        """A revision became ready (or stopped being): the rollout may move now."""
        uid = body["metadata"]["uid"]
        if type == "DELETED":
            _READY_SEEN.pop(uid, None)
            return
        name = (body["metadata"].get("labels") or {}).get(_OWNER_LABEL)
        ready = _available(dict(body))
        if name is None or _READY_SEEN.get(uid) == ready:
            return
        _READY_SEEN[uid] = ready
        try:
            _reconcile_fresh(body["metadata"]["namespace"], name, settings)
        except kopf.PermanentError:
            return  # the resource's own handler reported it

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
                except kopf.PermanentError:
                    continue
                except Exception:
                    log.exception("canary analysis of %s/%s failed", namespace, name)
                    _WAKE[(namespace, name)] = time.monotonic() + 5
