"""Storage decisions made before any pod exists: where the output goes, and whether
the claims and Secret a run names can work at all.

Pure: the caller fetches the claims and asks whether the Secret exists, so each rule
is tested without a cluster. Each refusal names the claim, Secret or field, because a
pod stuck Pending (or in CreateContainerConfigError) says nothing in the resource's
own status, which is where users and Argo CD look.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelsmith.api import uri
from modelsmith.api.common import WorkloadSpec
from modelsmith.builders.batch import Artifacts
from modelsmith.builders.owner import Owner
from modelsmith.builders.storage import claims, uses_object_store
from modelsmith.conditions import Reason
from modelsmith.config import Settings

SHARED_MODES = {"ReadWriteMany"}
READ_SHARED_MODES = {"ReadWriteMany", "ReadOnlyMany"}


@dataclass(frozen=True)
class Refusal:
    """Why no Job is created; ``retry`` when the user may fix it without a spec change
    (create the claim or Secret), so the operator looks again."""

    reason: Reason
    message: str
    retry: bool = False


def output_uri(
    requested: str | None, settings: Settings, *, namespace: str, kind: str, name: str, uid: str
) -> str | None:
    """The output URI as given, or derived under the default store; the uid keeps a
    recreated resource of the same name from publishing over its predecessor."""
    if requested:
        return requested
    if settings.default_storage is None:
        return None
    return uri.join(settings.default_storage, namespace, kind.lower(), name, uid)


def artifacts(
    owner: Owner,
    spec: WorkloadSpec,
    settings: Settings,
    resolved: Mapping[str, str],
    fields: Mapping[str, str],
) -> Artifacts | None:
    """Every URI a run's pods touch (its output, resolved inputs and the URIs its spec
    names, such as a DataPipeline's sources) and its Secret; None without an output."""
    output = output_uri(
        spec.output.uri,
        settings,
        namespace=owner.namespace,
        kind=owner.kind,
        name=owner.name,
        uid=owner.uid,
    )
    if output is None:
        return None
    named = {value for where, value in fields.items() if where != "spec.output.uri"}
    reads = tuple(sorted(set(resolved.values()) | named))
    ref = spec.storage.secret_ref
    secret = secret_for(
        ref.name if ref else None,
        settings,
        service_account=spec.service_account_name,
        uris=(output, *reads),
    )
    return Artifacts(output, reads, secret)


def not_configured(kind: str) -> Refusal:
    return Refusal(
        Reason.STORAGE_NOT_CONFIGURED,
        f"spec.output.uri is not set and the operator has no default store: set output.uri "
        f"(pvc://CLAIM/path or s3://BUCKET/prefix) on this {kind}, or install the operator "
        "with defaultStorage",
    )


def spec_errors(settings: Settings, fields: Mapping[str, str]) -> list[str]:
    """Problems with the URIs themselves; ``fields`` maps where each one is set (a path
    such as spec.sources[0].uri) to the URI."""
    errors = []
    for where, value in fields.items():
        try:
            location = uri.parse(value)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if location.scheme == uri.Scheme.NODE and not settings.allow_node_paths:
            errors.append(
                f"{where}: {value} is a path on the node, which this operator is not told "
                "exists (nothing written there outlives the pod); use pvc://CLAIM/path or "
                "s3://BUCKET/prefix, or run the operator with allowNodePaths on a dev cluster"
            )
    return errors


def nested_output(output: str, reads: Iterable[str]) -> list[str]:
    """An output inside an input (or the reverse) would read what it is writing."""
    errors = []
    for read in reads:
        a, b = output.rstrip("/"), read.rstrip("/")
        if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
            errors.append(f"output {output} overlaps the input {read}")
    return errors


def secret_for(
    requested: str | None, settings: Settings, *, service_account: str | None, uris: Iterable[str]
) -> str | None:
    """The Secret the pods get AWS keys from: the resource's own, else the operator's
    default, but only for object storage and only without workload identity (a
    ServiceAccount), where those keys would override the identity's."""
    if requested:
        return requested
    if service_account or not uses_object_store(uris):
        return None
    return settings.default_storage_secret


def claim_refusal(
    output: str | None, reads: Iterable[str], found: Mapping[str, dict[str, Any] | None], pods: int
) -> Refusal | None:
    """A missing claim, or one whose access modes cannot serve ``pods`` pods at once
    (ReadWriteOnce attaches to one node: the second pod would hang in Multi-Attach)."""
    wanted = claims(output, reads)
    missing = [c.name for c in wanted if found.get(c.name) is None]
    if missing:
        return Refusal(
            Reason.CLAIM_NOT_FOUND,
            f"PersistentVolumeClaim {', '.join(missing)} not found in this namespace; create "
            "it (or fix the pvc:// URI): the run starts once it exists",
            retry=True,
        )
    if pods < 2:
        return None
    for claim in wanted:
        pvc = found[claim.name] or {}
        modes = set(pvc.get("spec", {}).get("accessModes", []) or [])
        enough = SHARED_MODES if claim.written else READ_SHARED_MODES
        if not modes & enough:
            need = "ReadWriteMany" if claim.written else "ReadOnlyMany or ReadWriteMany"
            return Refusal(
                Reason.CLAIM_ACCESS_MODE,
                f"this run has {pods} pods but PersistentVolumeClaim {claim.name} is "
                f"{', '.join(sorted(modes)) or 'without access modes'}: they need {need} "
                "(use such a claim, object storage, or one worker)",
            )
    return None


def secret_refusal(secret: str | None, exists: bool) -> Refusal | None:
    if secret is None or exists:
        return None
    return Refusal(
        Reason.SECRET_NOT_FOUND,
        f"Secret {secret} (storage credentials) not found in this namespace; create it with "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for an "
        "S3-compatible store): the run starts once it exists",
        retry=True,
    )
