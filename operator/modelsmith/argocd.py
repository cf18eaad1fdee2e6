"""Argo CD health checks of the five kinds, rendered as argocd-cm keys.

The Lua scripts live in argocd/resource_customizations/modelsmith.io/<Kind>/health.lua,
the layout of Argo CD's built-in checks, so they can be upstreamed unchanged and are
tested there against testdata. An Argo CD installation reads custom checks from
argocd-cm keys `resource.customizations.health.<group>_<Kind>` instead; this module
turns the files into those keys, so the ConfigMap never holds a hand-copied script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from modelsmith.api import KINDS
from modelsmith.api.meta import GROUP

REPO_ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = REPO_ROOT / "argocd" / "resource_customizations" / GROUP
HEALTH_SCRIPT = "health.lua"


def config_key(kind: str) -> str:
    """The argocd-cm key Argo CD looks up for a kind's custom health check."""
    return f"resource.customizations.health.{GROUP}_{kind}"


def health_scripts(root: Path = CUSTOMIZATIONS) -> dict[str, str]:
    """Kind -> its health.lua, for every kind of ours; a missing one is an error, not a
    silently shorter ConfigMap (Argo CD would then call that kind healthy at once)."""
    missing = [info.kind for info in KINDS if not (root / info.kind / HEALTH_SCRIPT).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no {HEALTH_SCRIPT} for {', '.join(missing)} under {root} "
            "(run from a checkout of the repository, or pass --dir)"
        )
    return {info.kind: (root / info.kind / HEALTH_SCRIPT).read_text() for info in KINDS}


def configmap_data(root: Path = CUSTOMIZATIONS) -> dict[str, str]:
    return {config_key(kind): script for kind, script in health_scripts(root).items()}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the patch reads like the Lua files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(root: Path = CUSTOMIZATIONS, *, helm_values: bool = False) -> str:
    """A patch for argocd-cm (`kubectl patch --patch-file`), or values for the argo-cd
    Helm chart (`configs.cm`), holding one health check per kind."""
    data = configmap_data(root)
    document: dict[str, Any] = {"configs": {"cm": data}} if helm_values else {"data": data}
    how = (
        "helm upgrade argocd argo/argo-cd -n argocd -f THIS_FILE"
        if helm_values
        else "kubectl -n argocd patch configmap argocd-cm --patch-file THIS_FILE"
    )
    header = (
        f"# Argo CD health checks for {GROUP}, generated from argocd/resource_customizations.\n"
        f"# {how}\n"
    )
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `argocd-cm` subcommand, for the `modelsmith` command's parser."""
    parser = sub.add_parser(
        "argocd-cm", help="print the argocd-cm patch with the health checks of our kinds"
    )
    parser.add_argument(
        "--helm-values",
        action="store_true",
        help="print values for the argo-cd Helm chart (configs.cm) instead of a patch",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=CUSTOMIZATIONS,
        help=f"the resource_customizations/{GROUP} folder (default: this checkout's)",
    )
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(render(args.dir, helm_values=args.helm_values))
    except FileNotFoundError as exc:
        print(f"modelsmith: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m modelsmith.argocd [--helm-values] [--dir PATH]`."""
    parser = argparse.ArgumentParser(prog="modelsmith")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["argocd-cm", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
