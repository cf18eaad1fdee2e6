"""`modelsmith dev install`: the chart and this checkout's images on the dev cluster.

What a user's `helm install` of a release does on their cluster, with the images of the
checkout: build all five, push them to the dev registry (each under its content tag,
and all under one release tag, since the chart names a single tag for every workload
image), then `helm upgrade --install` with the operator pod placed on the real node,
watching every namespace. Workload pods still choose their nodes themselves: the
samples for the real node carry its nodeSelector and toleration.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelsmith.devcluster import imagecontext, images, nodestorage, tools
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.nodeconfig import LABEL, REGISTRY_IN_NODE, TAINT_KEY

Log = Callable[[str], None]
RELEASE = "modelsmith"
NAMESPACE = "modelsmith-system"


@dataclass(frozen=True)
class Installed:
    namespace: str
    operator_image: str
    workload_registry: str
    workload_tag: str


def chart_dir(root: Path) -> Path:
    chart = root / "charts" / "modelsmith"
    if not (chart / "Chart.yaml").is_file():
        raise DevClusterError(f"no chart at {chart}: run from a modelsmith checkout")
    return chart


def helm_values(
    operator_image: str, workload_tag: str | None = None, watch: Sequence[str] = ()
) -> list[str]:
    """The --set flags: the operator image, the operator pod on the real node (kwok's
    nodes run nothing), the workload images from the dev registry as the node reaches
    it (when a tag is given) and the namespaces it watches (none given: every one)."""
    repository, tag = operator_image.rsplit(":", 1)
    escaped = LABEL.replace(".", "\\.")  # helm --set splits keys on dots
    flags = [
        *("--set", f"image.repository={repository}", "--set", f"image.tag={tag}"),
        *("--set-string", f"nodeSelector.{escaped}=true"),
        *("--set", f"tolerations[0].key={TAINT_KEY}", "--set", "tolerations[0].operator=Exists"),
        # The dev Prometheus scrapes the router pods on the real node: canaries analyse.
        *("--set", f"canary.prometheusUrl={nodestorage.prometheus_pod_url()}"),
    ]
    if workload_tag:
        flags += ["--set", f"workloadImages.registry={REGISTRY_IN_NODE}/modelsmith"]
        flags += ["--set", f"workloadImages.tag={workload_tag}"]
    if watch:
        flags += ["--set", f"watchNamespaces={{{','.join(watch)}}}"]
    return flags


def install(
    cluster: DevCluster,
    log: Log = print,
    *,
    namespace: str = NAMESPACE,
    watch: Sequence[str] = (),
) -> Installed:
    """Build, push and helm-install; ``watch``: the namespaces the operator reconciles
    (the demo gives its own, so tests on the same cluster keep theirs to themselves)."""
    if not cluster.node.running():
        raise DevClusterError(
            "the dev cluster has no real node running: `modelsmith dev up` starts it "
            "(and says why it cannot); the operator pod needs a node that runs containers"
        )
    registry = f"127.0.0.1:{cluster.ports.registry}"
    refs = images.build(imagecontext.IMAGES, log)
    release = images.release_tag(refs.values())
    for ref in refs.values():
        images.push(ref, registry, log)
        images.push(ref, registry, log, tag=release)
    operator = images.push_reference(refs["operator"], REGISTRY_IN_NODE)
    root = imagecontext.source_root()
    argv = [
        str(tools.binary(tools.HELM, "helm")),
        f"--kubeconfig={cluster.kubeconfig}",
        *("upgrade", "--install", RELEASE, str(chart_dir(root))),
        *("--namespace", namespace, "--create-namespace"),
        *helm_values(operator, release, watch),
        # The CRDs may already be there from `kubectl apply -f crds/` (the tests, an
        # earlier demo): the chart's are the same files, so the release adopts them.
        *("--take-ownership", "--force-conflicts", "--wait", "--timeout", "300s"),
    ]
    log(f"helm: installing the chart as release {RELEASE} in {namespace}")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"helm upgrade --install failed: {proc.stderr.strip()}")
    log(f"operator: {operator} Ready in {namespace}; workload images {release}")
    return Installed(namespace, operator, f"{REGISTRY_IN_NODE}/modelsmith", release)
