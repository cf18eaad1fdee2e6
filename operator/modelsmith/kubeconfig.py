"""Where a process finds its API server: the one piece of client set-up the operator and
the router share. It imports only the kubernetes client, so the router (which watches
its ConfigMap) does not pull in the operator's request metrics through `k8s`."""

from __future__ import annotations

import os

from kubernetes import config


def load_config() -> None:
    """In a pod use the service account; elsewhere the current kubeconfig context."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # Read KUBECONFIG now: the client captures its default path at import time.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
