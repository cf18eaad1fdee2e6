"""The real node's configuration files, as pure functions of its paths and ports.

Each file is what the feasibility study (../shared/realnode-recipe.md) found this kind
of VM needs: containerd with `restrict_oom_score_adj` (no CAP_SYS_RESOURCE here, so the
pause container's -998 cannot be set), a CNI bridge on its own subnet (kwok's fake pod
IPs are 10.244/16), a kubelet on cgroupfs/cgroup v1 that never evicts for disk and
tolerates the machine's missing knobs, kube-proxy in iptables mode (no IPVS in this
kernel) that does not touch conntrack's global table size, and CoreDNS answering only
cluster names (it has no `forward`: pods never reach the machine's resolver).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelsmith.devcluster.components import NODE_IP

NODE_NAME = "modelsmith-node"
HOST_IP = "10.250.0.1"
LINK_CIDR = "30"
POD_CIDR = "10.245.0.0/24"
BRIDGE_IP = "10.245.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KWOK_POD_CIDR = "10.244.0.0/16"
KWOK_NODE_IP = "10.0.0.1"
REGISTRY_IN_NODE = "localhost:5000"
"""Where pods' images come from: the dev registry, bridged into the node's namespace."""
PAUSE_IMAGE = "localhost/modelsmith/pause:3.10"
TAINT_KEY = "modelsmith.io/real-node"
LABEL = "modelsmith.io/real-node"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN = "/usr/lib/cni"


@dataclass(frozen=True)
class NodePaths:
    """Everything the node keeps lives under ``home``; what it only runs with, under ``run``."""

    home: Path
    run: Path

    @property
    def containerd_root(self) -> Path:
        return self.home / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def containerd_sock(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def api_sock(self) -> Path:
        return self.run / "api.sock"

    @property
    def registry_sock(self) -> Path:
        return self.run / "registry.sock"

    @property
    def prometheus_sock(self) -> Path:
        return self.run / "prometheus.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.home / "kubelet"

    @property
    def cni_conf(self) -> Path:
        return self.home / "cni"

    @property
    def cni_ipam(self) -> Path:
        return self.run / "cni-ipam"

    @property
    def hosts_dir(self) -> Path:
        return self.home / "certs.d"

    @property
    def pod_logs(self) -> Path:
        return self.home / "pod-logs"

    @property
    def config(self) -> Path:
        return self.home / "config"


def containerd_toml(paths: NodePaths) -> str:
    """containerd 1.6's CRI plugin, private to this node (own socket, root, CNI config)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", \
"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", \
"io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{paths.containerd_sock}"

[ttrpc]
  address = "{paths.containerd_sock}.ttrpc"

[debug]
  level = "warn"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  # An unpacked layer's compressed blob is of no further use here (the registry keeps
  # it): dropping it saves ~3 GB per torch image on a disk that holds them three times.
  discard_unpacked_layers = true

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{paths.cni_conf}"

[{cri}.registry]
  config_path = "{paths.hosts_dir}"
"""


def registry_hosts_toml() -> str:
    """The dev registry speaks plain HTTP on the node's loopback (a socat bridge)."""
    return (
        f'server = "http://{REGISTRY_IN_NODE}"\n\n'
        f'[host."http://{REGISTRY_IN_NODE}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def cni_conflist(paths: NodePaths) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "modelsmith",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(paths.cni_ipam),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_yaml(paths: NodePaths, ca_cert: Path) -> str:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": f"unix://{paths.containerd_sock}",
        "imageServiceEndpoint": f"unix://{paths.containerd_sock}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [NODE_IP],
        "resolvConf": "",
        "oomScoreAdj": 0,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "podLogsDir": str(paths.pod_logs),
        "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        "maxPods": 30,
        "serializeImagePulls": False,
    }
    return json.dumps(config, indent=2)


def kube_proxy_yaml(kubeconfig: Path) -> str:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": ["primary"],
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "conntrack": {"maxPerCore": 0},
        "iptables": {"minSyncPeriod": "1s", "syncPeriod": "30s"},
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
    }
    return json.dumps(config, indent=2)


def corefile(kubeconfig: Path, context: str) -> str:
    """Cluster names only; anything else is refused rather than forwarded off the machine."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:10254
    ready 127.0.0.1:10255
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig} {context}
        pods insecure
        fallthrough in-addr.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
.:53 {{
    bind {NODE_IP}
    errors
}}
"""
