"""The reconcile skeleton both handlers share, against a Kubernetes API over HTTP.

kmock's emulator stands in for the API server here so that the races can be staged: a
status PATCH answered 409 (the resource moved since it was read), a resource deleted or
recreated between an event and its read. Every call below is a real HTTP request
through the operator's own client; the integration tier runs the same paths against the
real API server, where these races cannot be produced on demand.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import kopf
import kubernetes
import pytest

from modelsmith import k8s
from modelsmith.api.common import BatchStatus, Phase
from modelsmith.api.inference import InferenceServiceStatus, ServingPhase
from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.config import Settings
from modelsmith.handlers import batch, fresh, inference
from modelsmith.later import LATER

NS = "ns"
SETTINGS = Settings("reg", "t")
PIPELINE = next(k for k in BATCH_KINDS if k.info.kind == "DataPipeline")
API = "/apis/modelsmith.io/v1alpha1"


def _obj(kind: str, name: str, uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "resourceVersion": "7",
            "generation": 1,
        },
        "spec": {},
    }


@pytest.fixture
async def api(kmock: kmock.KubernetesEmulator) -> AsyncIterator[kmock.KubernetesEmulator]:
    """The operator's client pointed at kmock, and the two resources stored there."""
    previous = kubernetes.client.Configuration.get_default_copy()
    config = kubernetes.client.Configuration()
    config.host = str(kmock.url).rstrip("/")
    kubernetes.client.Configuration.set_default(config)
    k8s._api_client.cache_clear()
    for plural, kind, name in (
        ("datapipelines", "DataPipeline", "pipe"),
        ("inferenceservices", "InferenceService", "svc"),
    ):
        kmock.objects[kmock.resource("modelsmith.io", "v1alpha1", plural), NS, name] = _obj(
            kind, name
        )
    yield kmock
    for key in LATER.pending():
        LATER.cancel(key)
    kubernetes.client.Configuration.set_default(previous)
    k8s._api_client.cache_clear()


def _status_path(plural: str, name: str) -> str:
    return f"patch {API}/namespaces/{NS}/{plural}/{name}/status"


def _batch_pass(monkeypatch: pytest.MonkeyPatch) -> Callable[[], fresh.Outcome]:
    passes = itertools.count(1)

    def reconcile(kind: Any, body: kopf.Body, settings: Settings) -> BatchStatus:
        new = BatchStatus(phase=Phase.RUNNING, restarts=next(passes))
        fresh.write_status(kind.info.plural, body, new)
        return new

    monkeypatch.setattr(batch, "reconcile", reconcile)
    return lambda: batch._reconcile_fresh(PIPELINE, NS, "pipe", SETTINGS)


def _inference_pass(monkeypatch: pytest.MonkeyPatch) -> Callable[[], fresh.Outcome]:
    passes = itertools.count(1)

    def reconcile(body: kopf.Body, settings: Settings) -> float | None:
        new = InferenceServiceStatus(phase=ServingPhase.PENDING, observed_generation=next(passes))
        fresh.write_status(inference.PLURAL, body, new)
        return None

    monkeypatch.setattr(inference, "reconcile", reconcile)
    return lambda: inference._reconcile_fresh(NS, "svc", SETTINGS)


# Each pass writes a status the last one did not (a pass counter in it): kmock stores a
# PATCH even when its reaction answers 409, where the API server would not.
HANDLERS = {
    "batch": (_batch_pass, "datapipelines", "pipe", "Running"),
    "inference": (_inference_pass, "inferenceservices", "svc", "Pending"),
}


@pytest.mark.parametrize("handler", HANDLERS)
async def test_three_lost_races_come_back_a_second_later(
    api: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, handler: str
) -> None:
    """Most callers are event handlers, which kopf never retries: giving up after three
    stale reads would leave the resource waiting for an event that may never come."""
    make, plural, name, _phase = HANDLERS[handler]
    api[_status_path(plural, name)] << 409
    outcome = await asyncio.to_thread(make(monkeypatch))
    assert outcome == fresh.Outcome.STALE
    assert len(api["get"]) == fresh.ATTEMPTS
    assert len(api["patch"]) == fresh.ATTEMPTS
    kind = "DataPipeline" if handler == "batch" else "InferenceService"
    assert f"stale:{kind}/{NS}/{name}" in LATER.pending()


@pytest.mark.parametrize("handler", HANDLERS)
async def test_a_race_lost_once_is_won_by_the_next_fresh_read(
    api: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, handler: str
) -> None:
    make, plural, name, phase = HANDLERS[handler]
    api[_status_path(plural, name)][:1] << 409
    outcome = await asyncio.to_thread(make(monkeypatch))
    assert outcome == fresh.Outcome.DONE
    assert len(api["get"]) == 2, "one read per attempt"
    assert api["patch"][-1].data["metadata"] == {"resourceVersion": "7"}
    stored = api.objects[api.resource("modelsmith.io", "v1alpha1", plural), NS, name]
    assert stored["status"]["phase"] == phase
    assert not LATER.pending(), "a pass that went through schedules nothing extra"


async def test_the_event_body_saves_the_first_read(
    api: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    make = _batch_pass(monkeypatch)
    del make  # only to patch batch.reconcile
    first = kopf.Body(_obj("DataPipeline", "pipe"))  # type: ignore[arg-type]
    outcome = await asyncio.to_thread(
        lambda: batch._reconcile_fresh(PIPELINE, NS, "pipe", SETTINGS, first=first)
    )
    assert outcome == fresh.Outcome.DONE
    assert len(api["get"]) == 0
    assert len(api["patch"]) == 1


async def test_a_resource_gone_or_recreated_is_not_reconciled(
    api: kmock.KubernetesEmulator,
) -> None:
    calls: list[kopf.Body] = []
    recreated = fresh.Target("DataPipeline", "datapipelines", NS, "pipe", uid="uid-0")
    gone = fresh.Target("DataPipeline", "datapipelines", NS, "nothing")
    for target in (recreated, gone):
        outcome = await asyncio.to_thread(fresh.reconcile_fresh, target, calls.append)
        assert outcome == fresh.Outcome.GONE
        assert target.key not in fresh.LOCKS, "a gone resource's lock goes with it"
    assert calls == []


async def test_nothing_changed_writes_nothing(api: kmock.KubernetesEmulator) -> None:
    status = BatchStatus(phase=Phase.RUNNING)
    stored = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    body = kopf.Body({**_obj("DataPipeline", "pipe"), "status": stored})  # type: ignore[arg-type]
    wrote = await asyncio.to_thread(fresh.write_status, "datapipelines", body, status)
    assert wrote is False
    assert len(api["patch"]) == 0


@pytest.mark.parametrize(
    ("handler", "conditions"),
    [("batch", {"Ready": "False", "Failed": "True"}), ("inference", {"Ready": "False"})],
)
async def test_an_invalid_spec_is_said_in_status_and_an_event_then_nothing_retries(
    api: kmock.KubernetesEmulator, handler: str, conditions: dict[str, str]
) -> None:
    """Each kind's own reconcile, on a spec its model refuses: a status that says why,
    one Warning event, Outcome.INVALID (kopf.PermanentError), no child applied."""
    if handler == "batch":
        outcome = await asyncio.to_thread(batch._reconcile_fresh, PIPELINE, NS, "pipe", SETTINGS)
        plural = "datapipelines"
    else:
        outcome = await asyncio.to_thread(inference._reconcile_fresh, NS, "svc", SETTINGS)
        plural = "inferenceservices"
    assert outcome == fresh.Outcome.INVALID
    (patch,) = api[_status_path(plural, "pipe" if handler == "batch" else "svc")]
    status = patch.data["status"]
    assert status["phase"] == "Failed"
    assert {c["type"]: c["status"] for c in status["conditions"]} == conditions
    assert {c["reason"] for c in status["conditions"]} == {"InvalidSpec"}
    (event,) = api["post"]
    assert (event.data["type"], event.data["reason"]) == ("Warning", "InvalidSpec")
    assert event.data["involvedObject"]["uid"] == "uid-1"
    assert "spec" in event.data["message"].lower() or "field" in event.data["message"].lower()
    assert len(api["patch"]) == 1, "nothing but the status: no child was applied"
