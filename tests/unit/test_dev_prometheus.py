"""The dev Prometheus's scrape config: what it keeps, what it never dials, who it is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelsmith.devcluster import prometheus
from modelsmith.devcluster.components import Ports, prometheus_config
from modelsmith.devcluster.nodeconfig import KWOK_POD_CIDR, NODE_IP, POD_CIDR
from modelsmith.devcluster.pki import PKIPaths


def _config(tmp_path: Path) -> dict[str, Any]:
    _path, text = prometheus_config(tmp_path, Ports.from_base(20000), PKIPaths(tmp_path / "pki"))
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """The keep/drop/replace/labelmap subset of Prometheus's relabelling (anchored regexes)."""
    labels = dict(labels)
    for rule in rules:
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        value = ";".join(labels.get(s, "") for s in rule.get("source_labels", []))
        action = rule.get("action", "replace")
        if action == "keep" and not regex.match(value):
            return None
        if action == "drop" and regex.match(value):
            return None
        if action == "replace" and (m := regex.match(value)):
            replacement = rule.get("replacement", "$1")
            labels[rule["target_label"]] = re.sub(
                r"\$(\d)", lambda g: m.group(int(g[1])), replacement
            )
        if action == "labelmap":
            for name in list(labels):
                if m := regex.match(name):
                    labels[m.group(1)] = labels[name]
    kept = {"__address__", "__metrics_path__"}
    return {k: v for k, v in labels.items() if v and (not k.startswith("__") or k in kept)}


def _pod(ip: str, **annotations: str) -> dict[str, str]:
    meta = {
        "__address__": f"{ip}:8080",
        "__meta_kubernetes_namespace": "team-a",
        "__meta_kubernetes_pod_name": "web-0",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_label_app": "web",
    }
    for key, value in annotations.items():
        meta[f"__meta_kubernetes_pod_annotation_prometheus_io_{key}"] = value
    return meta


def test_cidr_regex_matches_the_network_and_nothing_else() -> None:
    regex = re.compile(prometheus.cidr_regex(POD_CIDR))
    assert regex.fullmatch("10.245.0.17")
    assert not regex.fullmatch("10.244.0.17")
    assert not regex.fullmatch("10.245.1.17")
    with pytest.raises(ValueError, match="exact regex"):
        prometheus.cidr_regex("10.245.0.0/20")


def test_annotated_pods_on_the_real_node_are_scraped_with_their_labels(tmp_path: Path) -> None:
    jobs = {j["job_name"]: j for j in _config(tmp_path)["scrape_configs"]}
    rules = jobs["kubernetes-pods"]["relabel_configs"]
    kept = _relabel(rules, _pod("10.245.0.9", scrape="true", port="9100", path="/m"))
    assert kept == {
        "__address__": "10.245.0.9:9100",
        "__metrics_path__": "/m",
        "app": "web",
        "namespace": "team-a",
        "pod": "web-0",
    }
    assert _relabel(rules, _pod("10.245.0.9")) is None  # not annotated
    done = {**_pod("10.245.0.9", scrape="true"), "__meta_kubernetes_pod_phase": "Succeeded"}
    assert _relabel(rules, done) is None


def test_no_job_ever_dials_a_kwok_pod_or_a_non_pod_address(tmp_path: Path) -> None:
    """kwok's 10.244/16 pods and endpoints such as the API server's are unreachable."""
    kwok_ip = KWOK_POD_CIDR.split("/")[0].rsplit(".", 1)[0] + ".5"
    for job in _config(tmp_path)["scrape_configs"]:
        for ip in (kwok_ip, NODE_IP):
            meta = {
                **_pod(ip, scrape="true"),
                "__meta_kubernetes_service_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_service_label_app_kubernetes_io_name": "modelsmith",
                "__meta_kubernetes_endpoint_port_name": "metrics",
            }
            assert _relabel(job["relabel_configs"], meta) is None, (job["job_name"], ip)


def test_discovery_uses_its_own_client_certificate(tmp_path: Path) -> None:
    for job in _config(tmp_path)["scrape_configs"]:
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["api_server"] == f"https://127.0.0.1:{Ports.from_base(20000).apiserver}"
        assert sd["tls_config"]["cert_file"] == str(tmp_path / "pki" / "prometheus.crt")


def test_the_operator_job_matches_the_charts_service_monitor(tmp_path: Path) -> None:
    chart = Path(__file__).parents[2] / "charts" / "modelsmith" / "templates"
    monitor = (chart / "servicemonitor.yaml").read_text()
    assert "- port: metrics" in monitor
    assert "path: /metrics" in monitor
    assert "honorLabels: true" in monitor
    jobs = {j["job_name"]: j for j in _config(tmp_path)["scrape_configs"]}
    operator = jobs["modelsmith-operator"]
    assert operator["honor_labels"] is True
    assert "metrics_path" not in operator  # /metrics, Prometheus's default
    meta = {
        "__address__": "10.245.0.4:8080",
        "__meta_kubernetes_namespace": "modelsmith",
        "__meta_kubernetes_service_name": "ms-modelsmith",
        "__meta_kubernetes_pod_name": "ms-modelsmith-abc",
        "__meta_kubernetes_service_label_app_kubernetes_io_name": "modelsmith",
        "__meta_kubernetes_endpoint_port_name": "metrics",
    }
    assert _relabel(operator["relabel_configs"], meta) == {
        "__address__": "10.245.0.4:8080",
        "namespace": "modelsmith",
        "service": "ms-modelsmith",
        "pod": "ms-modelsmith-abc",
    }
    router = {**meta, "__meta_kubernetes_service_label_app_kubernetes_io_name": "modelsmith-router"}
    assert _relabel(operator["relabel_configs"], router) is None


def test_rbac_grants_what_discovery_lists_and_watches() -> None:
    role, binding = prometheus.rbac_manifests()
    core = next(r for r in role["rules"] if r.get("apiGroups") == [""])
    assert {"pods", "services", "endpoints", "nodes"} <= set(core["resources"])
    assert {"get", "list", "watch"} <= set(core["verbs"])
    assert {"nonResourceURLs": ["/metrics"], "verbs": ["get"]} in role["rules"]
    assert binding["subjects"][0]["name"] == prometheus.DEV_USER
