"""What every reconcile does around its own decision, written once for all five kinds.

Several paths reconcile the same resource (its own events, its children's, its
upstreams', the clock), and any of them may act on a status another has already moved
on. So each pass starts from a read, writes its status under that read's
resourceVersion, and on a 409 starts again from a fresh read; passes over one resource
run one at a time in this process; and when every attempt loses the race the pass is
tried again a moment later, because most callers are event handlers that kopf never
retries. The batch and the inference handlers each had a copy of this, and the copies
had drifted (one cleared status keys that went away, one did not; one came back after
three lost races, one gave up).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, Protocol, TypeVar, cast

import kopf
from pydantic import BaseModel

from modelsmith import k8s, mergepatch
from modelsmith.api.meta import GROUP, VERSION, Condition, ConditionStatus
from modelsmith.conditions import ConditionType, Reason, set_condition
from modelsmith.later import LATER

log = logging.getLogger(__name__)

ATTEMPTS = 3
STALE_RETRY_S = 1.0
"""After ``ATTEMPTS`` stale reads in a row, the pass runs again this much later."""


class StaleReadError(Exception):
    """The resource changed since it was read; reconcile again from a fresh read."""


@dataclass(frozen=True)
class Target:
    """One resource to reconcile; with ``uid``, only that incarnation of the name."""

    kind: str
    plural: str
    namespace: str
    name: str
    uid: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def read(self) -> dict[str, Any] | None:
        obj = k8s.get(f"{GROUP}/{VERSION}", self.kind, self.namespace, self.name, self.plural)
        if obj is None or (self.uid is not None and obj["metadata"]["uid"] != self.uid):
            return None
        return obj


class Outcome(enum.Enum):
    DONE = "done"
    GONE = "gone"  # deleted, or recreated under the same name
    INVALID = "invalid"  # kopf.PermanentError: the status says why; nothing to retry
    STALE = "stale"  # every attempt lost the race; the pass runs again STALE_RETRY_S later


class _Locks:
    """One lock per resource, dropped when the resource is gone."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def drop(self, key: str) -> None:
        with self._guard:
            self._locks.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._guard:
            return key in self._locks


LOCKS = _Locks()


def reconcile_fresh(
    target: Target, once: Callable[[kopf.Body], None], *, first: kopf.Body | None = None
) -> Outcome:
    """Run ``once`` on the resource as stored, again on a fresh read if it raises
    StaleReadError. ``first``, when given, is a body read just now (the event's), used
    for the first attempt instead of a read."""
    with LOCKS.held(target.key):
        for attempt in range(ATTEMPTS):
            obj = dict(first) if attempt == 0 and first is not None else target.read()
            if obj is None:
                LOCKS.drop(target.key)
                return Outcome.GONE
            try:
                once(kopf.Body(cast(kopf.RawBody, obj)))
                return Outcome.DONE
            except StaleReadError:
                continue
            except kopf.PermanentError:
                return Outcome.INVALID
    log.warning(
        "%s: status moved under %d reads in a row; again in %s s",
        target.key,
        ATTEMPTS,
        STALE_RETRY_S,
    )
    LATER.call(f"stale:{target.key}", STALE_RETRY_S, lambda: reconcile_fresh(target, once))
    return Outcome.STALE


def status_patch(old: dict[str, Any], new: BaseModel) -> dict[str, Any]:
    """Only what changed, so an unchanged world writes nothing; and what went away as
    null at every depth (mergepatch): sending changed top-level keys whole left a
    finished run's progress.etaSeconds in its status."""
    rendered = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    return mergepatch.diff(old, rendered)


def write_status(plural: str, body: kopf.Body, new: BaseModel) -> bool:
    """Patch the status to ``new`` if it differs from the one in ``body``, and only if
    nobody wrote the resource since ``body`` was read; True if it wrote."""
    changed = status_patch(dict(body.get("status", {}) or {}), new)
    if not changed:
        return False
    meta = body["metadata"]
    try:
        k8s.patch_status(plural, meta["namespace"], meta["name"], changed, meta["resourceVersion"])
    except k8s.ApiError as exc:
        if exc.status == 409:
            raise StaleReadError(f"{body['kind']} {meta['name']} changed meanwhile") from exc
        raise
    return True


def event(body: kopf.Body, type_: str, reason: str, message: str) -> None:
    """An Event on the resource, from whichever thread the pass runs in (kopf.event
    needs kopf's handler context, which the clock's and ``later``'s threads lack)."""
    k8s.post_event(dict(body), type_, reason, message)


class _WithConditions(Protocol):
    conditions: list[Condition]


S = TypeVar("S", bound=BaseModel)


def reject(
    plural: str,
    body: kopf.Body,
    current: S,
    message: str,
    *,
    phase: str,
    conditions: Sequence[tuple[ConditionType, ConditionStatus]],
    now: datetime,
) -> NoReturn:
    """InvalidSpec: say why in status (each of ``conditions``) and in a Warning event,
    create nothing, and stop until the spec changes."""
    generation = int(body["metadata"].get("generation", 1))
    conds = list(cast(_WithConditions, current).conditions)
    for type_, status in conditions:
        conds = set_condition(
            conds,
            type_,
            status,
            reason=Reason.INVALID_SPEC,
            message=message,
            now=now,
            generation=generation,
        )
    invalid = current.model_copy(
        update={"conditions": conds, "observed_generation": generation, "phase": phase}
    )
    write_status(plural, body, invalid)
    event(body, "Warning", str(Reason.INVALID_SPEC), message)
    raise kopf.PermanentError(f"invalid spec: {message}")
