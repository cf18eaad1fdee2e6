"""The status patch removes what the new status no longer has, at every depth."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from modelsmith.mergepatch import diff


def apply(target: Any, patch: Any) -> Any:
    """RFC 7386's MergePatch, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


leaves = st.one_of(st.integers(), st.text(max_size=3), st.booleans())
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abcd"), inner),
    max_leaves=12,
)
objects = st.dictionaries(st.sampled_from("abcde"), values, max_size=5)


# No deadline: on a 2-core machine beside the workload tests, a slow example is no bug.
@settings(deadline=None)
@given(objects, objects)
def test_applying_the_diff_to_the_old_status_gives_the_new(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert apply(old, diff(old, new)) == new


@settings(deadline=None)
@given(objects)
def test_an_unchanged_status_writes_nothing(status: dict[str, Any]) -> None:
    assert diff(status, status) == {}


def test_a_finished_rollouts_last_analysis_does_not_outlive_it() -> None:
    old = {"phase": "Ready", "canary": {"revision": "a", "lastAnalysis": "t1", "weight": 100}}
    new = {"phase": "Progressing", "canary": {"revision": "b", "weight": 0}}
    patch = diff(old, new)
    assert patch == {
        "phase": "Progressing",
        "canary": {"revision": "b", "weight": 0, "lastAnalysis": None},
    }
