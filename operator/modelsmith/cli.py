"""The `modelsmith` command: the operator, the local cluster, and generated files."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from modelsmith.devcluster.errors import DevClusterError


def _dev_images(args: argparse.Namespace) -> int:
    from modelsmith.devcluster import imagecontext, images, imagestore

    if args.prune:
        if args.images or args.push:
            raise DevClusterError("--prune goes alone: it keeps what this tree builds")
        imagestore.prune()
        return 0
    refs = images.build(args.images or imagecontext.IMAGES)  # prints each image and its size
    if args.push:
        for ref in refs.values():
            images.push(ref, args.push)
    return 0


def _dev_install(watch: list[str]) -> int:
    from modelsmith.devcluster import install
    from modelsmith.devcluster.cluster import DevCluster

    install.install(DevCluster.from_env(), watch=watch)
    return 0


def _dev_command(args: argparse.Namespace) -> int:
    if args.dev_command == "images":
        return _dev_images(args)
    if args.images or args.push or args.prune:
        raise DevClusterError("image names, --push and --prune go with `modelsmith dev images`")
    if args.dev_command == "install":
        return _dev_install(args.watch)
    if args.watch:
        raise DevClusterError("--watch goes with `modelsmith dev install`")
    return _dev(args)


def _dev(args: argparse.Namespace) -> int:
    from modelsmith.devcluster import buildah, nodestorage, tools
    from modelsmith.devcluster.cluster import DevCluster
    from modelsmith.devcluster.nodeconfig import NODE_NAME

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
        cluster.down(purge=args.purge)
        return 0
    if args.dev_command == "env":
        sys.stdout.write(cluster.env())
        return 0
    status = cluster.status()
    if not status.components:
        print(f"dev cluster: not running (home {status.home})")
        return 1
    print(f"dev cluster: {'running' if status.running else 'DEGRADED'} at {status.server}")
    print(f"prometheus: {cluster.prometheus_url} (scrapes annotated pods on the real node)")
    if cluster.node.running():
        print(
            f"object store: {nodestorage.host_endpoint()} (pods: {nodestorage.pod_endpoint()}; "
            f"keys: {nodestorage.credentials_path(cluster.home)}); "
            f"claims: StorageClass {nodestorage.STORAGE_CLASS} (default)"
        )
    print(f"{'COMPONENT':<26}{'PID':>8}  {'PORT':>6}  STATE")
    for c in status.components:
        state = "healthy" if c.healthy else ("unhealthy" if c.running else "exited")
        print(f"{c.name:<26}{c.pid:>8}  {c.port:>6}  {state}")
    for proc, alive in cluster.node.running():
        state = "running" if alive else "exited"
        print(f"{'node/' + proc.name:<26}{proc.pid:>8}  {'-':>6}  {state}")
    usage = cluster.disk_usage()
    print(
        "images on disk: "
        + ", ".join(f"{where} {buildah.human_size(size)}" for where, size in usage.items())
        + f" (total {buildah.human_size(sum(usage.values()))})"
    )
    if status.running:
        print(cluster.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product").rstrip())
        pods = cluster.kubectl(
            "get",
            "pods",
            "-A",
            "-o",
            "wide",
            f"--field-selector=spec.nodeName={NODE_NAME}",
            check=False,
        )
        if pods.strip():
            print(f"pods on the real node {NODE_NAME}:")
            print(pods.rstrip())
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
    from modelsmith.runner import RunOptions, run

    # Read by the handler registration (also under `kopf run -m modelsmith.kopf_entry`).
    os.environ["MODELSMITH_STATUS_PORT"] = str(args.status_port)

    return run(
        RunOptions(
            namespaces=args.namespace,
            all_namespaces=args.all_namespaces,
            metrics_port=args.metrics_port,
            health_port=args.health_port,
            log_format=args.log_format,
            peering=args.peering,
            priority=args.priority,
        )
    )


def _configmap_ref(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, not {value!r}")
    return namespace, name


def _router(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modelsmith.router.server import Options, run

    return run(
        Options(
            routes_file=Path(args.routes_file) if args.routes_file else None,
            configmap=args.configmap,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            max_mirrors=args.max_mirrors,
            drain_seconds=args.drain_seconds,
        )
    )


def _add_router(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    router = sub.add_parser(
        "router", help="the built-in traffic router in front of an InferenceService's revisions"
    )
    source = router.add_mutually_exclusive_group(required=True)
    source.add_argument("--routes-file", metavar="PATH", help="read the route table from a file")
    source.add_argument(
        "--configmap",
        metavar="NAMESPACE/NAME",
        type=_configmap_ref,
        help="watch the route table in this ConfigMap (key routes.json)",
    )
    router.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
    router.add_argument("--port", type=int, default=8080, help="the proxied port")
    router.add_argument("--metrics-port", type=int, default=9090, help="serve /metrics here")
    router.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to connect upstream (504)"
    )
    router.add_argument(
        "--read-timeout",
        type=float,
        default=600.0,
        help="seconds an upstream may stay silent, before its headers or between chunks (504)",
    )
    router.add_argument(
        "--max-mirrors", type=int, default=256, help="mirrored copies in flight; more are dropped"
    )
    router.add_argument(
        "--drain-seconds", type=float, default=25.0, help="on SIGTERM, time left to requests"
    )
    router.set_defaults(func=_router)


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
    run.add_argument(
        "--health-port",
        type=int,
        default=0,
        help="serve kopf's liveness probe at /healthz (0: off)",
    )
    run.add_argument(
        "--peering",
        metavar="NAME",
        help="join the kopf peering object NAME so that, of several replicas, only one acts "
        "(default: standalone, no peering)",
    )
    run.add_argument(
        "--priority",
        type=int,
        help="peering priority; the highest acts (default: random, as equal ones freeze all)",
    )
    run.set_defaults(func=_run)

    dev = sub.add_parser("dev", help="the local control plane (etcd, apiserver, kwok nodes)")
    dev.add_argument(
        "dev_command",
        choices=["build", "up", "down", "status", "env", "images", "install"],
        help="build: compile the binaries once; up: start what is not running (state is "
        "kept); down: stop (add --purge to delete the cluster's data, certificates and "
        "images); status; env: shell exports for KUBECONFIG and PATH; images: build the "
        "workload and operator images with buildah (no Docker engine needed); install: "
        "build and push the images, then helm-install the chart (operator pod on the real "
        "node)",
    )
    dev.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="with images: which ones (operator, data, trainer, quantizer, server; default all)",
    )
    dev.add_argument(
        "--push",
        metavar="HOST:PORT",
        help="with images: also push each to this plain-HTTP registry as "
        "HOST:PORT/modelsmith/IMAGE:TAG",
    )
    dev.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="with install: a namespace the operator watches (repeat; default: all)",
    )
    dev.add_argument(
        "--prune",
        action="store_true",
        help="with images: remove from buildah's store the images (and their cached build "
        "steps) that this checkout no longer builds",
    )
    dev.add_argument(
        "--purge",
        action="store_true",
        help="with down: also delete etcd's data, the certificates, the registry and the "
        "real node's images and volumes",
    )
    dev.set_defaults(func=_dev_command)

    crds = sub.add_parser(
        "crds", help="regenerate crds/, the chart's CRD templates and the batch Argo CD checks"
    )
    crds.add_argument("--check", action="store_true", help="fail if generated files drifted")
    crds.set_defaults(func=_crds)

    from modelsmith import argocd  # the health checks' argocd-cm keys, from argocd/

    argocd.add_parser(sub)

    _add_router(sub)
    return parser


def entrypoint() -> int:
    """The `modelsmith` command. Only a process of its own may take the default SIGPIPE
    action (`modelsmith dev status | head` ends quietly): `main` called in-process, as
    the tests do, must not leave a process that serves sockets to die on one."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except DevClusterError as exc:
        print(f"modelsmith: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
