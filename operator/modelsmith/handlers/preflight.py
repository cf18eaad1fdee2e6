"""The claims and Secret a resource names, looked up before its first pod exists.

Shared by the batch and serving handlers; the decisions are `storagecheck`'s (pure),
the lookups are here: a claim by `get`, a Secret by a dry-run create (the operator
never reads Secrets).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelsmith import k8s, storagecheck
from modelsmith.builders.storage import claims
from modelsmith.storagecheck import Refusal

RETRY_SECONDS = 20.0
"""How soon a resource waiting for its claim or Secret looks again: nothing the
operator may watch announces a Secret, so it asks again instead."""


def check(
    namespace: str, output: str | None, reads: Iterable[str], secret: str | None, pods: int
) -> Refusal | None:
    reads = list(reads)
    found = {
        c.name: k8s.get("v1", "PersistentVolumeClaim", namespace, c.name)
        for c in claims(output, reads)
    }
    refusal = storagecheck.claim_refusal(output, reads, found, pods)
    if refusal is not None or secret is None:
        return refusal
    return storagecheck.secret_refusal(secret, k8s.secret_exists(namespace, secret))
