"""A ValidatingAdmissionPolicy that refuses node paths at `kubectl apply`.

Whether `file://` and bare paths are allowed is an install setting (the chart's
storage.allowNodePaths), so the CRDs, shared by every install, cannot say it; the
operator refuses such a spec (InvalidSpec) when it reconciles. The chart also installs
this policy, so the API server refuses the manifest itself, with the field's path,
before anything is stored. The expressions are generated from the CRD schemas: every
string that carries the URI grammar's rule gets a check, wherever it is nested.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modelsmith.api import KINDS
from modelsmith.api.meta import GROUP
from modelsmith.api.uri import URI_MESSAGE

NODE_REGEX = r"^(file://)?/"
ITEMS = "[]"


def _is_uri(node: dict[str, Any]) -> bool:
    return any(r.get("message") == URI_MESSAGE for r in node.get("x-kubernetes-validations", []))


def uri_paths(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths below spec to every URI string; ITEMS stands for "each item of a list"."""
    if schema.get("type") == "string" and _is_uri(schema):
        yield path
    for key, child in (schema.get("properties") or {}).items():
        yield from uri_paths(child, (*path, key))
    if schema.get("type") == "array" and "items" in schema:
        yield from uri_paths(schema["items"], (*path, ITEMS))


def _allowed(base: str, path: tuple[str, ...], depth: int = 0) -> str:
    """CEL that holds when the URI at ``path`` below ``base`` is absent or no node path."""
    if not path:
        return f"!{base}.matches(r'{NODE_REGEX}')"
    head, *rest = path
    if head == ITEMS:
        item = f"i{depth}"
        return f"{base}.all({item}, {_allowed(item, tuple(rest), depth + 1)})"
    return f"!has({base}.{head}) || ({_allowed(f'{base}.{head}', tuple(rest), depth)})"


def _where(path: tuple[str, ...]) -> str:
    return "spec" + "".join("[*]" if p == ITEMS else f".{p}" for p in path)


def validations() -> list[dict[str, str]]:
    from modelsmith.crdgen import openapi_schema

    out = []
    for info in KINDS:
        for path in uri_paths(openapi_schema(info.spec)):
            out.append(
                {
                    "expression": (
                        f"request.kind.kind != '{info.kind}' || {_allowed('object.spec', path)}"
                    ),
                    "message": (
                        f"{info.kind} {_where(path)}: file:// and bare paths name a directory on "
                        "the node, and this cluster's modelsmith is installed without "
                        "storage.allowNodePaths (nothing written there outlives the pod); use "
                        "pvc://CLAIM/path or s3://BUCKET/prefix"
                    ),
                }
            )
    return out


def policy(name: str) -> list[dict[str, Any]]:
    """The policy and its cluster-wide binding."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": [info.plural for info in KINDS],
                        }
                    ]
                },
                "validations": validations(),
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        },
    ]
