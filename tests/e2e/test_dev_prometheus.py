"""The dev cluster's Prometheus finds real pods as a user's would: by Kubernetes service
discovery and the prometheus.io/* annotations, and never dials kwok's fake pods."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from kubernetes import client

from modelsmith.devcluster import nodestorage
from modelsmith.devcluster.cluster import DevCluster
from modelsmith.devcluster.nodeconfig import KWOK_POD_CIDR
from tests.e2e.conftest import chart_on_real_node, pod_on_node, wait_phase

pytestmark = pytest.mark.integration

EXPORTER = (
    "import http.server\n"
    "BODY = (b'# HELP modelsmith_e2e_probe A value the dev Prometheus must scrape.\\n'\n"
    "        b'# TYPE modelsmith_e2e_probe gauge\\n'\n"
    "        b'modelsmith_e2e_probe 42\\n')\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        if self.path != '/probe-metrics':\n"
    "            self.send_error(404); return\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Type', 'text/plain; version=0.0.4')\n"
    "        self.send_header('Content-Length', str(len(BODY)))\n"
    "        self.end_headers(); self.wfile.write(BODY)\n"
    "http.server.HTTPServer(('', 8080), H).serve_forever()\n"
)
ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "8080",
    "prometheus.io/path": "/probe-metrics",
}
KWOK_PODS = ipaddress.ip_network(KWOK_POD_CIDR)


def _on_kwok(address: str) -> bool:
    """``address`` (host:port, or a URL) is in kwok's made-up pod network."""
    host = urlsplit(address if "//" in address else f"//{address}").hostname or ""
    return ipaddress.ip_address(host) in KWOK_PODS


def _get(url: str, path: str, **params: str) -> Any:
    answer = httpx.get(f"{url}{path}", params=params, timeout=10)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    return body["data"]


def _series(url: str, query: str, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result: list[dict[str, Any]] = _get(url, "/api/v1/query", query=query)["result"]
        if result:
            return result
        if time.monotonic() > deadline:
            targets = _get(url, "/api/v1/targets")["activeTargets"]
            raise AssertionError(f"no series for {query} within {timeout}s; targets: {targets}")
        time.sleep(1)


def test_annotated_pod_is_discovered_and_kwok_pods_are_never_dialled(
    core: client.CoreV1Api, dev_cluster: DevCluster, namespace: str, pushed: dict[str, str]
) -> None:
    url = dev_cluster.prometheus_url
    name = "exporter"
    pod = pod_on_node(name, pushed["python-base"], ["-c", EXPORTER], command=["python3"])
    pod["metadata"]["annotations"] = ANNOTATIONS
    pod["metadata"]["labels"]["tier"] = "probe"
    pod["spec"]["restartPolicy"] = "Always"
    core.create_namespaced_pod(namespace, pod)
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "probe", "labels": {"team": "e2e"}, "annotations": ANNOTATIONS},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    # A pod on a kwok node, annotated alike: its IP is made up, nothing answers there.
    fake = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "on-kwok", "annotations": ANNOTATIONS},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "cpu-node-0"},
            "containers": [{"name": "main", "image": "example.invalid/none:1"}],
        },
    }
    core.create_namespaced_pod(namespace, fake)
    ip = wait_phase(core, namespace, name, {"Running"}).status.pod_ip
    fake_ip = wait_phase(core, namespace, "on-kwok", {"Running"}).status.pod_ip
    assert _on_kwok(fake_ip), fake_ip

    by_pod = _series(url, f'modelsmith_e2e_probe{{namespace="{namespace}",job="kubernetes-pods"}}')
    assert len(by_pod) == 1, by_pod
    labels = by_pod[0]["metric"]
    assert labels["namespace"] == namespace
    assert labels["pod"] == name
    assert labels["app"] == name  # the pod's own labels, by labelmap
    assert labels["tier"] == "probe"
    assert labels["instance"] == f"{ip}:8080"
    assert by_pod[0]["value"][1] == "42"

    by_service = _series(
        url, f'modelsmith_e2e_probe{{namespace="{namespace}",job="kubernetes-service-endpoints"}}'
    )
    assert [s["metric"]["service"] for s in by_service] == ["probe"]
    assert by_service[0]["metric"]["team"] == "e2e"

    targets = _get(url, "/api/v1/targets")
    active = [t["scrapeUrl"] for t in targets["activeTargets"]]
    assert not [a for a in active if _on_kwok(a)], active
    dropped = [t["discoveredLabels"]["__address__"] for t in targets["droppedTargets"]]
    assert [a for a in dropped if _on_kwok(a)], dropped  # discovered, and dropped
    ours = [t for t in targets["activeTargets"] if urlsplit(t["scrapeUrl"]).hostname == ip]
    assert len(ours) == 2, ours  # the pod, and the Service's endpoint
    assert all(t["health"] == "up" for t in ours), ours


@pytest.fixture
def operator_release(
    dev_cluster: DevCluster, crds: list[str], pushed: dict[str, str]
) -> Iterator[str]:
    """The chart's operator as a pod on the real node, watching only its own namespace."""
    with chart_on_real_node(dev_cluster, pushed["operator"], "prom") as ns:
        yield ns


def test_the_operator_installed_by_the_chart_is_scraped_as_its_service_monitor_says(
    dev_cluster: DevCluster, operator_release: str
) -> None:
    """The job the chart's ServiceMonitor stands for: its Service's `metrics` port."""
    ns = operator_release
    query = f'python_info{{job="modelsmith-operator",namespace="{ns}"}}'
    (series,) = _series(dev_cluster.prometheus_url, query)
    assert series["metric"]["service"] == "prom-modelsmith"
    assert series["metric"]["pod"].startswith("prom-modelsmith-")
    up = _series(dev_cluster.prometheus_url, f'up{{job="modelsmith-operator",namespace="{ns}"}}')
    assert [s["value"][1] for s in up] == ["1"]


def test_pods_query_prometheus_by_its_service_name(
    core: client.CoreV1Api, namespace: str, pushed: dict[str, str]
) -> None:
    """What the chart-installed operator's canary analyses do: the HTTP API, by the
    Service's name, from a pod on the real node."""
    url = nodestorage.prometheus_pod_url()
    script = (
        "import json, urllib.request\n"
        f"r = urllib.request.urlopen({url + '/api/v1/query?query=up'!r}, timeout=10)\n"
        "print(json.load(r)['status'])\n"
    )
    pod = pod_on_node("prom-client", pushed["python-base"], ["-c", script], command=["python3"])
    core.create_namespaced_pod(namespace, pod)
    done = wait_phase(core, namespace, "prom-client", {"Succeeded", "Failed"})
    logs = core.read_namespaced_pod_log("prom-client", namespace)
    assert done.status.phase == "Succeeded", logs
    assert logs.strip() == "success"
