"""The control plane's processes and their flags, as data: pure, so a test can read them.

The flag set follows what envtest and kwokctl's binary runtime run: every listener on
127.0.0.1, TLS with client certificates, `Node,RBAC` authorization, service-account
tokens signed by our own key, no leader election (one replica each).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from modelsmith.devcluster import pki, prometheus, tools

LOOPBACK = "127.0.0.1"
NODE_IP = "10.250.0.2"
"""The real node's address, on a veth into its own network namespace (see realnode)."""


@dataclass(frozen=True)
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    registry: int
    provisioner: int
    """The PVC provisioner's health endpoint (it serves nothing else)."""
    prometheus: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        return cls(
            base,
            base + 1,
            base + 3,
            base + 4,
            base + 5,
            base + 6,
            base + 7,
            provisioner=base + 8,
            prometheus=base + 9,
        )

    def by_component(self) -> dict[str, int]:
        return {
            "etcd": self.etcd,
            "etcd (peer)": self.etcd_peer,
            "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager,
            "kube-scheduler": self.scheduler,
            "kwok": self.kwok,
            "registry": self.registry,
            "provisioner": self.provisioner,
            "prometheus": self.prometheus,
        }


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    port: int
    health_url: str
    authenticated: bool = False
    """Health is checked as the admin user (the API server wants a client certificate)."""


def stages_bytes() -> bytes:
    return resources.files("modelsmith.devcluster").joinpath("stages", "stages.yaml").read_bytes()


def stages_path(home: Path) -> Path:
    """Named by content, so editing the stages changes kwok's argv and `up` restarts it."""
    digest = hashlib.sha256(stages_bytes()).hexdigest()[:12]
    return home / f"kwok-stages-{digest}.yaml"


def components(home: Path, ports: Ports, certs: pki.PKIPaths, kubeconfig: Path) -> list[Component]:
    """The processes of one cluster, in start order (each needs the ones before it)."""
    p = ports
    etcd_url = f"http://{LOOPBACK}:{p.etcd}"
    peer_url = f"http://{LOOPBACK}:{p.etcd_peer}"
    k8s = tools.KUBERNETES
    kubeconfigs = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
    ]
    common = [f"--bind-address={LOOPBACK}", "--leader-elect=false", "--profiling=false", "--v=1"]
    return [
        Component(
            "etcd",
            [
                str(tools.binary(tools.ETCD, "etcd")),
                "--name=dev",
                f"--data-dir={home / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=dev={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            p.etcd,
            f"{etcd_url}/health",
        ),
        Component(
            "kube-apiserver",
            [
                str(tools.binary(k8s, "kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={LOOPBACK}",
                # The `kubernetes` Service's endpoint: the real node's address, where its
                # API bridge listens, so pods reach the API server through the Service.
                f"--advertise-address={NODE_IP}",
                f"--secure-port={p.apiserver}",
                f"--tls-cert-file={certs.apiserver_cert}",
                f"--tls-private-key-file={certs.apiserver_key}",
                f"--client-ca-file={certs.ca_cert}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs.sa_pub}",
                f"--service-account-signing-key-file={certs.sa_key}",
                f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
                "--enable-admission-plugins=ExtendedResourceToleration",
                # `kubectl logs/exec/port-forward` on the real node: the API server is the
                # kubelet's client (admin pair), by the node's IP (its hostname resolves
                # nowhere, and every lookup stays local).
                f"--kubelet-client-certificate={certs.admin_cert}",
                f"--kubelet-client-key={certs.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            p.apiserver,
            f"https://{LOOPBACK}:{p.apiserver}/readyz",
            authenticated=True,
        ),
        Component(
            "kube-controller-manager",
            [
                str(tools.binary(k8s, "kube-controller-manager")),
                *kubeconfigs,
                f"--secure-port={p.controller_manager}",
                f"--root-ca-file={certs.ca_cert}",
                f"--service-account-private-key-file={certs.sa_key}",
                "--use-service-account-credentials=false",
                *common,
            ],
            p.controller_manager,
            f"https://{LOOPBACK}:{p.controller_manager}/healthz",
        ),
        Component(
            "kube-scheduler",
            [
                str(tools.binary(k8s, "kube-scheduler")),
                *kubeconfigs,
                f"--secure-port={p.scheduler}",
                *common,
            ],
            p.scheduler,
            f"https://{LOOPBACK}:{p.scheduler}/healthz",
        ),
        Component(
            "kwok",
            [
                str(tools.binary(tools.KWOK, "kwok")),
                f"--kubeconfig={kubeconfig}",
                f"--config={stages_path(home)}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                # Node leases are the heartbeat the node-lifecycle controller reads.
                # Without them only the heartbeat stage (every 60-130 s) updates a node,
                # past the 50 s grace period: nodes flapped NotReady, their pods were
                # marked unready and new pods refused by the not-ready taint.
                "--node-lease-duration-seconds=40",
                f"--server-address={LOOPBACK}:{p.kwok}",
                "--node-ip=10.0.0.1",
                "--cidr=10.244.0.0/16",
            ],
            p.kwok,
            f"http://{LOOPBACK}:{p.kwok}/healthz",
        ),
        Component(
            "registry",
            [
                str(tools.binary(tools.REGISTRY, "registry")),
                "serve",
                str(registry_config(home, p)[0]),
            ],
            p.registry,
            f"http://{LOOPBACK}:{p.registry}/v2/",
        ),
        Component(
            "prometheus",
            [
                str(tools.binary(tools.PROMETHEUS, "prometheus")),
                f"--config.file={prometheus_config(home, p, certs)[0]}",
                f"--storage.tsdb.path={home / 'prometheus'}",
                "--storage.tsdb.retention.time=2d",
                f"--web.listen-address={LOOPBACK}:{p.prometheus}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            p.prometheus,
            f"http://{LOOPBACK}:{p.prometheus}/-/ready",
        ),
    ]


def registry_config(home: Path, ports: Ports) -> tuple[Path, str]:
    """The image registry's config file (distribution's format), named by its content."""
    text = (
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {home / 'registry'}}}, "
        "delete: {enabled: true}}\n"
        f"http: {{addr: '{LOOPBACK}:{ports.registry}'}}\n"
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return home / f"registry-{digest}.yml", text


def prometheus_config(home: Path, ports: Ports, certs: pki.PKIPaths) -> tuple[Path, str]:
    """The dev Prometheus's config file (see prometheus.dev_config), named by content."""
    from modelsmith.devcluster.nodeconfig import POD_CIDR  # nodeconfig imports this module

    api_server = f"https://{LOOPBACK}:{ports.apiserver}"
    return prometheus.dev_config(home, api_server, certs, POD_CIDR)
