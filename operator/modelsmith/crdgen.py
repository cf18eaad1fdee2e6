"""Generate the CRDs from the pydantic models, so the schema has one source of truth.

pydantic emits JSON Schema (2020-12); the API server wants a *structural* OpenAPI v3
schema: no $ref, no anyOf-with-null, no `additionalProperties` beside `properties`,
boolean `exclusiveMinimum`. This module translates one into the other and adds what
only a CRD has: names, categories, printer columns, the status subresource and the
CEL rules carried in the models' `x-kubernetes-validations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from modelsmith import argocd
from modelsmith.api import KINDS, KindInfo
from modelsmith.api.meta import CATEGORY, GROUP, VERSION

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"

_DROP = {"title", "$defs"}
_RULES = "x-kubernetes-validations"


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        extra = {k: _resolve(v, defs) for k, v in node.items() if k != "$ref"}
        rules = [*target.get(_RULES, []), *extra.get(_RULES, [])]
        merged = {**target, **extra}
        if rules:  # the model's own rules and the field's (immutability) both apply
            merged[_RULES] = rules
        return merged
    return {k: _resolve(v, defs) for k, v in node.items()}


def _openapi_keywords(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one node's JSON Schema 2020-12 keywords into their OpenAPI v3.0 form."""
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types structurally")
        node = {**options[0], **node, "nullable": True}
        if node.get("default", "") is None:
            del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[limit], node[bound] = node[bound], True
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    return node


def _structural(node: Any) -> Any:
    """Rewrite a resolved JSON Schema tree into a structural OpenAPI v3 schema."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in _openapi_keywords(node).items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _structural(prop) for name, prop in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value)
        else:
            out[key] = value
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    resolved = _resolve({k: v for k, v in raw.items() if k != "$defs"}, defs)
    schema: dict[str, Any] = _structural(resolved)
    return schema


def crd(info: KindInfo) -> dict[str, Any]:
    spec = openapi_schema(info.spec)
    spec["description"] = f"Desired state of the {info.kind}."
    status = openapi_schema(info.status)
    status["description"] = f"Observed state of the {info.kind}, written by the operator."
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": list(info.printer_columns),
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": info.description,
                "required": ["spec"],
                _RULES: [{"rule": r, "message": m} for r, m in info.name_rules()],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec,
                    "status": status,
                },
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/part-of": "modelsmith"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


HEADER = "# Generated by `modelsmith crds` from operator/modelsmith/api. Do not edit.\n"
CHART_CRD_DIR = Path("charts") / "modelsmith" / "templates" / "crds"


def peering_crd(kind: str) -> dict[str, Any]:
    """kopf's peering CRDs (ClusterKopfPeering / KopfPeering), through which replicas of
    the operator see each other so that only the one with the highest priority acts.

    kopf writes one status key per operator identity and has no status subresource
    expectations, so the schema only keeps those keys from being pruned.
    """
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{PEERING_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelsmith"},
        },
        "spec": {
            "group": PEERING_GROUP,
            "scope": "Cluster" if kind.startswith("Cluster") else "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


PEERING_GROUP = "kopf.dev"
PEERING_KINDS = ("ClusterKopfPeering", "KopfPeering")


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=100)


def render(info: KindInfo) -> str:
    return HEADER + _dump(crd(info))


def render_peering(kind: str) -> str:
    return HEADER + _dump(peering_crd(kind))


def render_chart_template(info: KindInfo) -> str:
    """The same CRD behind the chart's crds.enabled / crds.keep switches (cert-manager style)."""
    return _chart_template(info.kind, crd(info))


def _chart_template(kind: str, doc: dict[str, Any]) -> str:
    body = _dump(doc)
    if "{{" in body:
        raise ValueError(f"{kind}: schema text would be read as a Helm template")
    keep = (
        "metadata:\n"
        "  {{- if .Values.crds.keep }}\n"
        "  annotations:\n"
        "    helm.sh/resource-policy: keep\n"
        "  {{- end }}\n"
    )
    body = body.replace("metadata:\n", keep, 1)
    return f"{HEADER}{{{{- if .Values.crds.enabled }}}}\n{body}{{{{- end }}}}\n"


NODE_PATHS_TEMPLATE = Path("charts") / "modelsmith" / "templates" / "node-paths-policy.yaml"
_NAME = "modelsmith-node-paths-name"


def render_node_paths_template() -> str:
    """The node-path policy, installed unless the chart allows node paths."""
    from modelsmith import nodepaths

    body = "---\n".join(_dump(doc) for doc in nodepaths.policy(_NAME))
    if "{{" in body:
        raise ValueError("node-path policy text would be read as a Helm template")
    body = body.replace(_NAME, '{{ include "modelsmith.fullname" . }}-node-paths')
    # An operator confined to some namespaces must not police the others (where another
    # install may allow node paths): the binding follows watchNamespaces.
    scope = (
        "  {{- with .Values.watchNamespaces }}\n"
        "  matchResources:\n"
        "    namespaceSelector:\n"
        "      matchExpressions:\n"
        "      - key: kubernetes.io/metadata.name\n"
        "        operator: In\n"
        "        values: {{ toJson . }}\n"
        "  {{- end }}\n"
    )
    return (
        f"{HEADER}{{{{- if not .Values.storage.allowNodePaths }}}}\n{body}{scope}{{{{- end }}}}\n"
    )


def expected_files(root: Path = REPO_ROOT) -> dict[Path, str]:
    files = {root / "crds" / f"{info.crd_name}.yaml": render(info) for info in KINDS}
    for info in KINDS:
        files[root / CHART_CRD_DIR / f"{info.crd_name}.yaml"] = render_chart_template(info)
    for kind in PEERING_KINDS:
        doc = peering_crd(kind)
        name = doc["metadata"]["name"]
        files[root / "crds" / f"{name}.yaml"] = render_peering(kind)
        files[root / CHART_CRD_DIR / f"{name}.yaml"] = _chart_template(kind, doc)
    files[root / NODE_PATHS_TEMPLATE] = render_node_paths_template()
    return files | argocd.generated_checks(root)


def write(root: Path = REPO_ROOT) -> list[Path]:
    files = expected_files(root)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)


def check(root: Path = REPO_ROOT) -> list[Path]:
    """Paths whose committed content differs from what the models generate."""
    drift = [
        path
        for path, text in expected_files(root).items()
        if not path.exists() or path.read_text() != text
    ]
    generated = set(expected_files(root))
    existing = [*(root / "crds").glob("*.yaml"), *(root / CHART_CRD_DIR).glob("*.yaml")]
    return drift + [p for p in existing if p not in generated]
