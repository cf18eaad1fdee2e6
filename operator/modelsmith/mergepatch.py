"""The JSON merge patch (RFC 7386) from one status to the next.

A merge patch merges objects key by key, so a patch that sends a nested object whole
still leaves every key the new one lacks as it was. Status written that way kept a
finished rollout's ``canary.lastAnalysis`` in the next rollout, whose first analysis
then ran the moment traffic first moved, on no data. Removed keys must be sent as null
at every depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The patch that turns ``old`` into ``new``: changed keys, nested objects as their
    own diff, removed keys as None; empty when nothing changed. Lists are replaced
    whole, as a merge patch does. ``new`` must hold no None (it would mean delete)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = diff(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
