"""The `modelsmith` command: the operator, the local cluster, and generated files."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from modelsmith.devcluster.errors import DevClusterError


def _dev(args: argparse.Namespace) -> int:
    from modelsmith.devcluster import tools
    from modelsmith.devcluster.cluster import DevCluster

    cluster = DevCluster.from_env()
    if args.dev_command == "build":
        for tool in tools.ALL_TOOLS:
            path = tools.build(tool)
            print(f"{tool.name} {tool.version}: {path}")
        return 0
    if args.dev_command == "up":
        cluster.up()
        print(f'export KUBECONFIG={cluster.kubeconfig}   # or: eval "$(modelsmith dev env)"')
        return 0
    if args.dev_command == "down":
        cluster.down()
        return 0
    if args.dev_command == "env":
        sys.stdout.write(cluster.env())
        return 0
    status = cluster.status()
    if not status.components:
        print(f"dev cluster: not running (home {status.home})")
        return 1
    print(f"dev cluster: {'running' if status.running else 'DEGRADED'} at {status.server}")
    print(f"{'COMPONENT':<26}{'PID':>8}  {'PORT':>6}  STATE")
    for c in status.components:
        state = "healthy" if c.healthy else ("unhealthy" if c.running else "exited")
        print(f"{c.name:<26}{c.pid:>8}  {c.port:>6}  {state}")
    if status.running:
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product").rstrip())
    return 0 if status.running else 1


def _crds(args: argparse.Namespace) -> int:
    from modelsmith import crdgen

    if args.check:
        drift = crdgen.check()
        for path in drift:
            print(f"out of date: {path} (run `modelsmith crds`)", file=sys.stderr)
        return 1 if drift else 0
    for path in crdgen.write():
        print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from modelsmith.runner import run

    # Read by the handler registration (also under `kopf run -m modelsmith.kopf_entry`).
    os.environ["MODELSMITH_STATUS_PORT"] = str(args.status_port)

    return run(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        log_format=args.log_format,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelsmith", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument(
        "--metrics-port", type=int, default=8080, help="serve Prometheus /metrics (0: off)"
    )
    run.add_argument(
        "--status-port",
        type=int,
        default=int(os.environ.get("MODELSMITH_STATUS_PORT", "0") or 0),
        help="serve POST /v1/progress for workload pods (0: off); pods learn the URL from "
        "MODELSMITH_STATUS_URL",
    )
    run.add_argument(
        "--log-format", choices=["json", "text"], default="json", help="structured or plain logs"
    )
    run.set_defaults(func=_run)

    dev = sub.add_parser("dev", help="the local control plane (etcd, apiserver, kwok nodes)")
    dev.add_argument(
        "dev_command",
        choices=["build", "up", "down", "status", "env"],
        help="build: compile the binaries once; up/down: start/stop; status; "
        "env: shell exports for KUBECONFIG and PATH",
    )
    dev.set_defaults(func=_dev)

    crds = sub.add_parser("crds", help="regenerate crds/ and the chart's CRD templates")
    crds.add_argument("--check", action="store_true", help="fail if generated files drifted")
    crds.set_defaults(func=_crds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `modelsmith dev status | head` is fine
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except DevClusterError as exc:
        print(f"modelsmith: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
