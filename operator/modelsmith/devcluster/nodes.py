"""The fake nodes of the local cluster, shaped like a cloud's GPU node pool.

GPU nodes carry the labels NVIDIA's GPU feature discovery sets and the taint managed
Kubernetes services put on GPU pools, so pods that ask for `nvidia.com/gpu` land there
(the API server's ExtendedResourceToleration admission adds the toleration) and CPU
pods stay off them, as on a real cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu: str
    memory: str
    gpus: int = 0
    zone: str = "zone-a"


DEFAULT_NODES = (
    NodeShape("gpu-node-0", cpu="208", memory="1800Gi", gpus=8, zone="zone-a"),
    NodeShape("gpu-node-1", cpu="208", memory="1800Gi", gpus=8, zone="zone-b"),
    NodeShape("cpu-node-0", cpu="32", memory="128Gi"),
)


def node_manifest(shape: NodeShape) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": shape.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": shape.zone,
        "type": "kwok",
    }
    # ephemeral-storage: every workload pod requests its scratch emptyDir's size.
    capacity = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": "110",
        "ephemeral-storage": "2Ti",
    }
    spec: dict[str, Any] = {}
    if shape.gpus:
        labels |= {
            "node.kubernetes.io/instance-type": "gpu-8x-h100",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": GPU_PRODUCT,
            "nvidia.com/gpu.count": str(shape.gpus),
            "nvidia.com/gpu.memory": "81559",
        }
        capacity[GPU_RESOURCE] = str(shape.gpus)
        spec["taints"] = [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    else:
        labels["node.kubernetes.io/instance-type"] = "cpu-32"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shape.name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
