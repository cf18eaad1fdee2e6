"""Resolve `fromRef` inputs from upstream status, and record where each input came from.

Pure: the caller passes a function that fetches an upstream object (or None), so the
decision table (missing, failed, still running, succeeded) is unit-tested without a
cluster. Missing upstreams are waited for, not failed: Argo CD applies a chain of
manifests in no particular order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelsmith.api.common import Input, LineageEntry
from modelsmith.conditions import ConditionType, Reason

Fetch = Callable[[str, str], dict[str, Any] | None]


@dataclass
class Resolution:
    uris: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes of each upstream artifact whose producer reported them."""
    versions: dict[str, str] = field(default_factory=dict)
    """The version (status.outputs.version) of each upstream artifact that has one."""
    lineage: list[LineageEntry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not (self.missing or self.pending or self.failed)


def _succeeded(obj: dict[str, Any]) -> bool:
    conds = obj.get("status", {}).get("conditions", []) or []
    return any(
        c.get("type") == ConditionType.SUCCEEDED and c.get("status") == "True" for c in conds
    )


def _failed(obj: dict[str, Any]) -> bool:
    conds = obj.get("status", {}).get("conditions", []) or []
    return any(c.get("type") == ConditionType.FAILED and c.get("status") == "True" for c in conds)


def resolve(inputs: dict[str, Input | None], fetch: Fetch) -> Resolution:
    out = Resolution()
    for name, source in inputs.items():
        if source is None:
            continue
        if source.uri is not None:
            out.uris[name] = source.uri
            out.lineage.append(LineageEntry(kind="Uri", uri=source.uri))
            continue
        ref = source.from_ref
        if ref is None:  # unreachable: Input holds exactly one of uri / fromRef
            continue
        label = f"{ref.kind}/{ref.name}"
        upstream = fetch(ref.kind, ref.name)
        if upstream is None:
            out.missing.append(label)
        elif _failed(upstream):
            out.failed.append(label)
        elif not _succeeded(upstream):
            out.pending.append(label)
        else:
            outputs = upstream.get("status", {}).get("outputs", {}) or {}
            uri = outputs.get("uri")
            if not uri:
                out.pending.append(label)
                continue
            out.uris[name] = uri
            if isinstance(outputs.get("sizeBytes"), int):
                out.sizes[name] = outputs["sizeBytes"]
            version = outputs.get("version")
            if isinstance(version, str):
                out.versions[name] = version
            out.lineage.append(
                LineageEntry(
                    kind=ref.kind,
                    name=ref.name,
                    uri=uri,
                    digest=outputs.get("digest"),
                    version=version if isinstance(version, str) else None,
                )
            )
    return out


def waiting_reason(resolution: Resolution) -> tuple[Reason, str]:
    """Why a resource cannot start yet, worst first: a failed upstream will never
    deliver (users must act), a missing one may still be applied, a pending one runs."""
    if resolution.failed:
        return Reason.UPSTREAM_FAILED, f"upstream failed: {', '.join(resolution.failed)}"
    if resolution.missing:
        return Reason.UPSTREAM_NOT_FOUND, f"upstream not found: {', '.join(resolution.missing)}"
    return Reason.WAITING_FOR_INPUT, f"waiting for: {', '.join(resolution.pending)}"
