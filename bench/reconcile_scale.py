"""Create N PretrainJobs at once on the local control plane and time the operator.

Reports p50/p99 from create to Job created and to status Running, API requests per
reconcile and the operator's peak RSS. The baseline, measured in the same run on the
same cluster, is N plain Jobs of the same shape created directly: the ratio says what
the operator adds on top of what Kubernetes itself takes.

    .venv/bin/python bench/reconcile_scale.py [--count 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config

from modelsmith import crdgen
from modelsmith.api import KINDS
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.nodes import NodeShape, node_manifest

GPUS_PER_NODE = 8
METRICS_PORT = 18090
POLL_SECONDS = 1.0  # each poll LISTs N objects: faster polling loads the API server
LONG_RUN = {"kwok.modelsmith.io/run-duration": "1h"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def add_bench_nodes(cluster: DevCluster, count: int) -> list[str]:
    shapes = [
        NodeShape(f"bench-gpu-{i}", cpu="208", memory="1800Gi", gpus=GPUS_PER_NODE)
        for i in range((count * 2 + GPUS_PER_NODE - 1) // GPUS_PER_NODE)
    ]
    doc = {"apiVersion": "v1", "kind": "List", "items": [node_manifest(s) for s in shapes]}
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(doc))
    names = [s.name for s in shapes]
    cluster.kubectl(
        "wait", "--for=condition=Ready", "--timeout=120s", *[f"node/{n}" for n in names]
    )
    return names


def watch_until(
    fetch: Any, done: Any, names: set[str], created: dict[str, float], timeout: float
) -> dict[str, float]:
    """Poll a list call; record when each name first satisfies ``done``."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(names) and time.monotonic() < deadline:
        for item in fetch():
            name = item["metadata"]["name"] if isinstance(item, dict) else item.metadata.name
            key = name.removesuffix("-run")
            if key in names and key not in seen and done(item):
                seen[key] = time.monotonic() - created[key]
        time.sleep(POLL_SECONDS)
    return seen


def baseline(namespace: str, count: int) -> dict[str, float]:
    """Plain Jobs, created directly: create → pod Running."""
    batch, core = client.BatchV1Api(), client.CoreV1Api()
    created: dict[str, float] = {}
    for i in range(count):
        name = f"base-{i}"
        container = client.V1Container(
            name="trainer",
            image="ghcr.io/modelsmith/trainer:bench",
            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
        )
        job = client.V1Job(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1JobSpec(
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(annotations=LONG_RUN),
                    spec=client.V1PodSpec(restart_policy="Never", containers=[container]),
                )
            ),
        )
        created[name] = time.monotonic()
        batch.create_namespaced_job(namespace, job)

    def pods() -> list[Any]:
        out = []
        for pod in core.list_namespaced_pod(namespace).items:
            pod.metadata.name = pod.metadata.labels.get("job-name", "")
            out.append(pod)
        return out

    return watch_until(pods, lambda p: p.status.phase == "Running", set(created), created, 300)


def operator_run(namespace: str, count: int) -> tuple[dict[str, float], dict[str, float]]:
    api, batch = client.CustomObjectsApi(), client.BatchV1Api()
    args = ("modelsmith.io", "v1alpha1", namespace, "pretrainjobs")
    created: dict[str, float] = {}
    for i in range(count):
        name = f"ptj-{i}"
        body = {
            "apiVersion": "modelsmith.io/v1alpha1",
            "kind": "PretrainJob",
            "metadata": {"name": name},
            "spec": {
                "dataset": {"uri": "file:///data/shards"},
                "architecture": {"layers": 2, "hiddenSize": 128, "heads": 4},
                "training": {
                    "globalBatchSize": 8,
                    "microBatchSize": 8,
                    "learningRate": 0.001,
                    "steps": 10,
                },
                "distribution": {"nodes": 1},
                "resources": {"gpus": 1},
                "podMetadata": {"annotations": LONG_RUN},
                "output": {"uri": f"file:///data/models/{name}"},
            },
        }
        created[name] = time.monotonic()
        api.create_namespaced_custom_object(*args, body)
    names = set(created)
    to_job: dict[str, float] = {}

    def jobs_thread() -> None:
        to_job.update(
            watch_until(
                lambda: batch.list_namespaced_job(namespace).items,
                lambda _j: True,
                names,
                created,
                600,
            )
        )

    thread = threading.Thread(target=jobs_thread)
    thread.start()
    to_running = watch_until(
        lambda: api.list_namespaced_custom_object(*args)["items"],
        lambda o: o.get("status", {}).get("phase") == "Running",
        names,
        created,
        600,
    )
    thread.join()
    return to_job, to_running


def scrape(port: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(("modelsmith_api_requests_total", "modelsmith_reconciles_total")):
            metric, value = line.rsplit(" ", 1)
            family = metric.split("{", 1)[0]
            totals[family] = totals.get(family, 0.0) + float(value)
    return totals


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    count = parser.parse_args().count

    cluster = DevCluster.from_env()
    cluster.up(log=lambda _m: None)
    config.load_kube_config(config_file=str(cluster.kubeconfig))
    for info in KINDS:
        cluster.kubectl("apply", "--server-side", "-f", "-", stdin=crdgen.render(info))
    nodes = add_bench_nodes(cluster, count)
    suffix = uuid.uuid4().hex[:6]
    base_ns, op_ns = f"bench-base-{suffix}", f"bench-op-{suffix}"
    core = client.CoreV1Api()
    for ns in (base_ns, op_ns):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    operator = None
    try:
        base = baseline(base_ns, count)
        core.delete_namespace(base_ns)  # frees the GPUs for the operator's run
        time.sleep(5)
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelsmith",
                "run",
                "-n",
                op_ns,
                f"--metrics-port={METRICS_PORT}",
                "--log-format=text",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        )
        time.sleep(3)
        to_job, to_running = operator_run(op_ns, count)
        time.sleep(2)
        metrics = scrape(METRICS_PORT)
        rss = peak_rss_mib(operator.pid)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        for ns in (base_ns, op_ns):
            subprocess.run(
                [
                    str(cluster.bin_dir / "kubectl"),
                    f"--kubeconfig={cluster.kubeconfig}",
                    "delete",
                    "namespace",
                    ns,
                    "--ignore-not-found",
                    "--wait=false",
                ],
                check=False,
                capture_output=True,
            )
        cluster.kubectl("delete", "node", *nodes, "--wait=false", check=False)

    def row(label: str, values: dict[str, float]) -> str:
        v = list(values.values())
        return (
            f"{label:<38} n={len(v):>4}/{count}  p50={pct(v, 0.5):7.2f}s  p99={pct(v, 0.99):7.2f}s"
        )

    print(row("baseline: plain Job create -> Running", base))
    print(row("operator: create -> Job created", to_job))
    print(row("operator: create -> status Running", to_running))
    reconciles = metrics.get("modelsmith_reconciles_total", 0.0)
    requests = metrics.get("modelsmith_api_requests_total", 0.0)
    print(
        f"API requests per reconcile: {requests / max(reconciles, 1):.2f} "
        f"({requests:.0f} requests / {reconciles:.0f} reconciles)"
    )
    print(f"operator peak RSS: {rss:.0f} MiB")
    ratio = pct(list(to_running.values()), 0.5) / pct(list(base.values()), 0.5)
    print(f"ratio p50 (operator create->Running) / (baseline create->Running): {ratio:.2f}")
    return 0 if len(to_running) == count and len(base) == count else 1


if __name__ == "__main__":
    raise SystemExit(main())
