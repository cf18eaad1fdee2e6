"""Desired children of a DataPipeline: its task-config ConfigMap and an Indexed Job.

Pure: typed spec in, manifest dicts out, with deterministic names, so a reconcile can
rebuild them at any time and server-side apply turns "same input" into "no change".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelsmith.api.datapipeline import DataPipelineSpec
from modelsmith.api.meta import GROUP, VERSION
from modelsmith.config import Settings

COMPONENT = "data"
TASK_CONFIG_KEY = "task.json"
TASK_CONFIG_DIR = "/etc/modelsmith"
TASK_API_VERSION = "task.modelsmith.io/v1alpha1"


@dataclass(frozen=True)
class Owner:
    """Identity of the custom resource that owns (and garbage-collects) its children."""

    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, component: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": f"modelsmith-{component}",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "modelsmith",
            f"{GROUP}/{self.kind.lower()}": self.name,
        }

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.reference()],
        }


def job_name(owner: Owner) -> str:
    return f"{owner.name}-{COMPONENT}"


def config_name(owner: Owner) -> str:
    return f"{owner.name}-task"


def task_config(owner: Owner, spec: DataPipelineSpec) -> dict[str, Any]:
    return {
        "apiVersion": TASK_API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "spec": spec.model_dump(mode="json", by_alias=True),
    }


def desired_configmap(owner: Owner, spec: DataPipelineSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(config_name(owner), COMPONENT),
        "data": {TASK_CONFIG_KEY: json.dumps(task_config(owner, spec), indent=2, sort_keys=True)},
    }


def desired_job(owner: Owner, spec: DataPipelineSpec, settings: Settings) -> dict[str, Any]:
    res = spec.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = {"memory": res.memory}
    if res.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(res.gpus)
    labels = owner.labels(COMPONENT)
    container = {
        "name": COMPONENT,
        "image": spec.image or settings.image(COMPONENT),
        "args": ["data", f"--task-config={TASK_CONFIG_DIR}/{TASK_CONFIG_KEY}"],
        "env": [
            {"name": "MODELSMITH_TASK_CONFIG", "value": f"{TASK_CONFIG_DIR}/{TASK_CONFIG_KEY}"}
        ],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": "task-config", "mountPath": TASK_CONFIG_DIR, "readOnly": True}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(job_name(owner), COMPONENT),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.workers,
            "parallelism": spec.workers,
            "backoffLimit": 3,
            "suspend": spec.suspend,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": "task-config", "configMap": {"name": config_name(owner)}}],
                },
            },
        },
    }
