"""The inference handler's answer to a status that keeps moving under its reads.

Its callers are mostly event handlers, which kopf never retries: after three stale
reads in a row the clock must be asked to come back, or the resource waits for an
event that may never come.
"""

from __future__ import annotations

import time
from typing import Any

import kopf
import pytest

from modelsmith.config import Settings
from modelsmith.handlers import inference

KEY = ("ns", "svc")
SETTINGS = Settings("reg", "t")


@pytest.fixture(autouse=True)
def _clean() -> Any:
    inference._WAKE.pop(KEY, None)
    yield
    inference._WAKE.pop(KEY, None)
    inference._LOCKS.pop(KEY, None)


def _serve(monkeypatch: pytest.MonkeyPatch, outcomes: list[bool]) -> list[int]:
    """Reads return the object; each reconcile loses the race (False) or not (True)."""
    reads: list[int] = []

    def get(*_: Any) -> dict[str, Any]:
        reads.append(1)
        return {"metadata": {"namespace": KEY[0], "name": KEY[1]}}

    def measured(_body: kopf.Body, _settings: Settings) -> None:
        if not outcomes.pop(0):
            raise kopf.TemporaryError("changed meanwhile", delay=0.5)

    monkeypatch.setattr(inference.k8s, "get", get)
    monkeypatch.setattr(inference, "_measured", measured)
    return reads


def test_three_lost_races_ask_the_clock_to_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _serve(monkeypatch, [False, False, False])
    before = time.monotonic()
    inference._reconcile_fresh(*KEY, SETTINGS)
    assert len(reads) == 3
    due = inference._WAKE[KEY]
    assert before + inference.STALE_RETRY_S <= due <= time.monotonic() + inference.STALE_RETRY_S


def test_a_race_lost_once_is_won_by_the_next_fresh_read(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _serve(monkeypatch, [False, True])
    inference._reconcile_fresh(*KEY, SETTINGS)
    assert len(reads) == 2
    assert KEY not in inference._WAKE, "a reconcile that went through schedules nothing extra"
