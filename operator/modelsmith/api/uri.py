"""The storage URI grammar, KServe's, written once for the CRD (CEL) and for Python.

Every input and output of every kind is one string: `pvc://CLAIM/path` (a claim in the
resource's namespace, mounted into the pods, never copied), `s3://BUCKET/prefix` or
`gs://BUCKET/prefix` (object storage through fsspec, credentials by reference), and,
only where the operator is told the nodes have them, `file:///path` or a bare `/path`.
The API server checks the grammar at `kubectl apply`; whether node paths are allowed is
an operator setting, so that check is the operator's (`validation.storage_errors`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field

_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_REST = r"(/([^/].*)?)?"
URI_REGEX = rf"^(pvc://{_CLAIM}|s3://{_BUCKET}|gs://{_BUCKET}){_REST}$|^(file://)?/[^/].*$"
"""RE2 and Python alike: CEL's matches() and re.fullmatch read it the same way."""
PARENT_REGEX = r"(^|/)\.\.(/|$)"
"""A `..` segment would climb out of the claim's mount into the pod's filesystem."""
PREFIXED_REGEX = rf"^(pvc://{_CLAIM}|s3://{_BUCKET}|gs://{_BUCKET})/[^/]|^(file://)?/[^/]"
"""An output needs a path below the claim or bucket: retries and checkpoints are
published beside it, which the root of a claim or bucket has no room for."""

URI_MESSAGE = (
    "must be pvc://CLAIM/path, s3://BUCKET/prefix or gs://BUCKET/prefix (lower-case "
    "claim names; buckets of 3 to 63 lower-case characters), or file:///path where the "
    "operator allows node paths"
)
_URI_RULES = [
    {"rule": f"self.matches(r'{URI_REGEX}')", "message": URI_MESSAGE},
    {"rule": f"!self.matches(r'{PARENT_REGEX}')", "message": "must not contain a '..' segment"},
]


def _check(value: str, *, prefixed: bool = False) -> str:
    if not re.search(URI_REGEX, value):
        raise ValueError(f"{value!r} {URI_MESSAGE}")
    if re.search(PARENT_REGEX, value):
        raise ValueError(f"{value!r} must not contain a '..' segment")
    if prefixed and not re.search(PREFIXED_REGEX, value):
        raise ValueError(f"{value!r} needs a path below the claim or bucket")
    return value


def _uri_field(extra_rules: list[dict[str, str]]) -> Any:
    rules: list[Any] = [*_URI_RULES, *extra_rules]
    return Field(max_length=2048, json_schema_extra={"x-kubernetes-validations": rules})


Uri = Annotated[str, _uri_field([]), AfterValidator(_check)]
"""Where an artifact is read from."""

OutputUri = Annotated[
    str,
    _uri_field(
        [
            {
                "rule": f"self.matches(r'{PREFIXED_REGEX}')",
                "message": "needs a path below the claim or bucket (pvc://CLAIM/path)",
            }
        ]
    ),
    AfterValidator(lambda v: _check(v, prefixed=True)),
]
"""Where an artifact is published: a URI with a path below its claim or bucket."""


class Scheme(StrEnum):
    PVC = "pvc"
    S3 = "s3"
    GS = "gs"
    NODE = "file"
    """file:// or a bare path: a directory the node has."""


@dataclass(frozen=True)
class Location:
    """A parsed URI: scheme, claim or bucket (none for node paths), path below it."""

    scheme: Scheme
    root: str
    path: str

    @property
    def remote(self) -> bool:
        return self.scheme in (Scheme.S3, Scheme.GS)


def parse(uri: str) -> Location:
    """Split a URI that already passed the grammar; a ValueError says what is wrong."""
    _check(uri)
    if uri.startswith("/") or uri.startswith("file://"):
        return Location(Scheme.NODE, "", uri.removeprefix("file://"))
    scheme, rest = uri.split("://", 1)
    root, _, path = rest.partition("/")
    return Location(Scheme(scheme), root, path.rstrip("/"))


def join(prefix: str, *parts: str) -> str:
    """``prefix`` with path segments added, one "/" between each."""
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts if p)])
