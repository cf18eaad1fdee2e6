"""The batch handler's status write leaves nothing behind that the new status lacks."""

from __future__ import annotations

from typing import Any

from modelsmith.api.common import BatchStatus, Phase, Progress
from modelsmith.handlers.fresh import status_patch as _status_patch
from tests.unit.test_mergepatch import apply

RUNNING: dict[str, Any] = {
    "phase": "Running",
    "observedGeneration": 1,
    "progress": {"step": 150, "total": 300, "etaSeconds": 40},
    "restarts": 1,
    "conditions": [],
    "lineage": [],
}


def test_a_finished_run_keeps_no_eta_from_its_last_progress_report() -> None:
    """A pod's final Result has step and total, no ETA; the status server's last
    report had one. Merged key by key, that ETA stayed on a Succeeded run."""
    done = BatchStatus.model_validate(RUNNING).model_copy(
        update={"phase": Phase.SUCCEEDED, "progress": Progress(step=300, total=300)}
    )
    stored = apply(RUNNING, _status_patch(RUNNING, done))
    assert stored["progress"] == {"step": 300, "total": 300}
    assert stored == done.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_a_field_the_new_status_drops_is_removed_and_nothing_changed_writes_nothing() -> None:
    fresh = BatchStatus.model_validate(RUNNING).model_copy(update={"restarts": None})
    stored = apply(RUNNING, _status_patch(RUNNING, fresh))
    assert "restarts" not in stored
    assert _status_patch(RUNNING, BatchStatus.model_validate(RUNNING)) == {}
