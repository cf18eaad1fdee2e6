"""A real Prometheus for tests and the dev loop: Debian's package, unpacked, no root.

`apt-get download` fetches the .deb through the Debian mirror this machine can reach
and `dpkg -x` unpacks it into the tool cache, so nothing is installed system-wide and
a fresh clone reuses it. `serve` starts it on loopback with a scrape config for the
given targets and waits until it answers /-/ready.

`dev_config` configures the dev cluster's own Prometheus (a component, see
components.py): it finds its targets the way a user's Prometheus does, through
kubernetes_sd_configs and the prometheus.io/* annotations, as the client
`modelsmith:prometheus` with the read access of the prometheus-operator's ClusterRole
(`rbac_manifests`). Debian builds its package without Kubernetes discovery, so that
Prometheus is built from source (tools.PROMETHEUS) like the rest of the cluster.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelsmith.devcluster import pki
from modelsmith.devcluster.errors import DevClusterError
from modelsmith.devcluster.tools import cache_root

PACKAGE = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"
"""Debian 12's; pinned so every machine runs the same Prometheus."""


def install_dir() -> Path:
    return cache_root() / "tools" / f"prometheus-{VERSION}"


def _download(folder: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "download", f"{PACKAGE}={VERSION}"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


def binary() -> Path:
    """The prometheus binary, downloaded and unpacked on first use."""
    target = install_dir() / "usr" / "bin" / "prometheus"
    if target.is_file():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DevClusterError("Prometheus comes from Debian's package: apt-get and dpkg needed")
    with tempfile.TemporaryDirectory(prefix="prometheus-deb-") as scratch:
        fetched = _download(scratch)
        if fetched.returncode != 0:  # package lists missing or stale on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            fetched = _download(scratch)
        debs = list(Path(scratch).glob("*.deb"))
        if fetched.returncode != 0 or not debs:
            raise DevClusterError(f"apt-get download {PACKAGE}={VERSION}: {fetched.stderr}")
        staging = Path(tempfile.mkdtemp(prefix="prometheus-", dir=install_dir().parent.parent))
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True)
        install_dir().parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(install_dir())  # atomic: a concurrent install wins, ours goes
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    config: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Take Prometheus away (as an outage would); the context exit is then a no-op."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def reload(self) -> None:
        """Re-read the config (the scrape targets changed)."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5):  # noqa: S310 (loopback)
            pass


def scrape_config(targets: Sequence[tuple[str, dict[str, str]]], interval: str) -> str:
    """One job per target, each with its labels (e.g. revision): a YAML document."""
    lines = [f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}"]
    lines.append("scrape_configs:")
    for index, (address, labels) in enumerate(targets):
        label_text = ", ".join(f'{k}: "{v}"' for k, v in sorted(labels.items()))
        lines.append(
            f"  - job_name: target-{index}\n"
            f"    static_configs:\n"
            f"      - targets: ['{address}']\n"
            f"        labels: {{{label_text}}}"
        )
    return "\n".join(lines) + "\n"


@contextmanager
def serve(
    targets: Sequence[tuple[str, dict[str, str]]], *, interval: str = "1s", timeout: float = 60
) -> Iterator[Server]:
    """Prometheus on 127.0.0.1 scraping ``targets`` (address, extra labels)."""
    exe = binary()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="prometheus-") as home:
        config = Path(home) / "prometheus.yml"
        config.write_text(scrape_config(targets, interval))
        log = (Path(home) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                str(exe),
                f"--config.file={config}",
                f"--storage.tsdb.path={home}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", config, proc)
        try:
            _wait_ready(server, proc, timeout, Path(home) / "prometheus.log")
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevClusterError(f"prometheus exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DevClusterError(f"prometheus not ready within {timeout}s: {log.read_text()[-2000:]}")


# -- the dev cluster's Prometheus -----------------------------------------------------

DEV_CLIENT = "prometheus"
"""The name of its client certificate in the cluster's PKI folder."""
DEV_USER = "modelsmith:prometheus"
"""Who the API server sees (the certificate's CN); `rbac_manifests` grants it."""
DEV_INTERVAL = "5s"


def cidr_regex(cidr: str) -> str:
    """A relabel regex matching exactly the IPv4 addresses of ``cidr`` (octet prefixes)."""
    net = ipaddress.IPv4Network(cidr)
    if net.prefixlen % 8:
        raise ValueError(f"{cidr}: only /8, /16, /24 and /32 prefixes have an exact regex")
    fixed = str(net.network_address).split(".")[: net.prefixlen // 8]
    return r"\.".join(fixed + [r"\d+"] * (4 - len(fixed)))


def _sd(role: str, api_server: str, certs: pki.PKIPaths) -> list[dict[str, Any]]:
    cert, key = pki.client_paths(certs, DEV_CLIENT)
    tls = {"ca_file": str(certs.ca_cert), "cert_file": str(cert), "key_file": str(key)}
    return [{"role": role, "api_server": api_server, "tls_config": tls}]


def _reachable_only(pod_cidr: str) -> dict[str, Any]:
    """Keep targets on the real node's pod network only.

    kwok's pods get made-up addresses in 10.244.0.0/16 that nothing routes to (kwok runs
    no containers): each would be a target down forever and a connect attempt that waits
    out its timeout every interval, so drop them before Prometheus ever dials them. The
    host routes to the real node's pod CIDR (via the node's veth), and only pods there
    run anything. Matched on __address__ (before the port is rewritten), which every role
    has, rather than on __meta_kubernetes_pod_ip, which endpoints without a pod (the
    `kubernetes` Service's) lack.
    """
    return {
        "source_labels": ["__address__"],
        "regex": cidr_regex(pod_cidr) + r"(:\d+)?",
        "action": "keep",
    }


def _opted_in(kind: str) -> dict[str, Any]:
    """prometheus.io/scrape: "true" on the pod or Service, as Prometheus's example
    Kubernetes config reads it (documentation/examples/prometheus-kubernetes.yml)."""
    meta = f"__meta_kubernetes_{kind}_annotation_prometheus_io"
    return {"source_labels": [f"{meta}_scrape"], "action": "keep", "regex": "true"}


def _path_and_port(kind: str) -> list[dict[str, Any]]:
    """prometheus.io/path and prometheus.io/port, as the same example reads them."""
    meta = f"__meta_kubernetes_{kind}_annotation_prometheus_io"
    return [
        {
            "source_labels": [f"{meta}_path"],
            "action": "replace",
            "target_label": "__metrics_path__",
            "regex": "(.+)",
        },
        {
            "source_labels": ["__address__", f"{meta}_port"],
            "action": "replace",
            "regex": r"([^:]+)(?::\d+)?;(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
    ]


def _copy(source: str, target: str) -> dict[str, Any]:
    return {"source_labels": [source], "action": "replace", "target_label": target}


def dev_scrape_config(api_server: str, certs: pki.PKIPaths, pod_cidr: str) -> dict[str, Any]:
    """The dev Prometheus's configuration: pods and Services by annotation, and the
    operator's metrics Service as the chart's ServiceMonitor selects it."""
    pods = {
        "job_name": "kubernetes-pods",
        "kubernetes_sd_configs": _sd("pod", api_server, certs),
        "relabel_configs": [
            _opted_in("pod"),
            _reachable_only(pod_cidr),
            {  # a finished or not yet started pod serves nothing
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "Pending|Succeeded|Failed|Completed",
                "action": "drop",
            },
            *_path_and_port("pod"),
            {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_pod_name", "pod"),
        ],
    }
    services = {
        "job_name": "kubernetes-service-endpoints",
        "kubernetes_sd_configs": _sd("endpoints", api_server, certs),
        "relabel_configs": [
            _opted_in("service"),
            _reachable_only(pod_cidr),
            {
                "source_labels": ["__meta_kubernetes_service_annotation_prometheus_io_scheme"],
                "action": "replace",
                "target_label": "__scheme__",
                "regex": "(https?)",
            },
            *_path_and_port("service"),
            {"action": "labelmap", "regex": "__meta_kubernetes_service_label_(.+)"},
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_service_name", "service"),
            _copy("__meta_kubernetes_pod_name", "pod"),
        ],
    }
    # charts/modelsmith/templates/servicemonitor.yaml, spelled for a plain Prometheus:
    # the release's Service (app.kubernetes.io/name=modelsmith; the pods the operator
    # builds are modelsmith-<component>), its `metrics` port, /metrics, honor_labels
    # (the operator's series carry a `namespace` of their own: the resource's).
    operator = {
        "job_name": "modelsmith-operator",
        "honor_labels": True,
        "kubernetes_sd_configs": _sd("endpoints", api_server, certs),
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_name"],
                "action": "keep",
                "regex": "modelsmith",
            },
            {
                "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                "action": "keep",
                "regex": "metrics",
            },
            _reachable_only(pod_cidr),
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_service_name", "service"),
            _copy("__meta_kubernetes_pod_name", "pod"),
        ],
    }
    return {
        "global": {
            "scrape_interval": DEV_INTERVAL,
            "scrape_timeout": "4s",
            "evaluation_interval": DEV_INTERVAL,
        },
        "scrape_configs": [pods, services, operator],
    }


def dev_config(home: Path, api_server: str, certs: pki.PKIPaths, pod_cidr: str) -> tuple[Path, str]:
    """The config file and its text, named by content (a change restarts Prometheus)."""
    text = "# Written by `modelsmith dev up` (modelsmith.devcluster.prometheus.dev_config).\n"
    text += yaml.safe_dump(dev_scrape_config(api_server, certs, pod_cidr), sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return home / f"prometheus-{digest}.yml", text


def rbac_manifests() -> list[dict[str, Any]]:
    """Read access for service discovery, as the prometheus-operator grants Prometheus."""
    rbac = "rbac.authorization.k8s.io"
    read = ["get", "list", "watch"]
    role = {
        "apiVersion": f"{rbac}/v1",
        "kind": "ClusterRole",
        "metadata": {"name": DEV_USER},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["nodes", "nodes/metrics", "services", "endpoints", "pods"],
                "verbs": read,
            },
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ],
    }
    binding = {
        "apiVersion": f"{rbac}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": DEV_USER},
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": DEV_USER},
        "subjects": [{"apiGroup": rbac, "kind": "User", "name": DEV_USER}],
    }
    return [role, binding]
