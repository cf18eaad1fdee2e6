"""Run the operator: register every kind's handlers and hand control to kopf."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import kopf

from modelsmith import k8s, kubeconfig, metrics, statusserver
from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.config import Settings
from modelsmith.handlers import batch, inference


def configure(settings: kopf.OperatorSettings) -> None:
    """Keep kopf's bookkeeping in annotations under our own prefix.

    kopf's default also writes `status.kopf`, which the structural schemas of our
    CRDs prune; annotations survive and do not mix with the status users read.
    """
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    # Handlers wait on the API server, not the CPU: more threads, more in flight.
    settings.execution.max_workers = 32


GROUP_PREFIX = "modelsmith.io"


def register_all() -> None:
    """Register every handler with kopf's default registry (done once, at import)."""
    app_settings = Settings.from_env()

    @kopf.on.login()
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod the service account, elsewhere KUBECONFIG: no client library guessing."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        kubeconfig.load_config()

    status_port = int(os.environ.get("MODELSMITH_STATUS_PORT", "0") or 0)
    if status_port:
        servers: list[Any] = []

        @kopf.on.startup()
        async def start_status_server(**_: Any) -> None:
            host = os.environ.get("MODELSMITH_STATUS_HOST", "0.0.0.0")  # noqa: S104
            servers.append(await statusserver.serve(host, status_port))

        @kopf.on.cleanup()
        async def stop_status_server(**_: Any) -> None:
            for server in servers:
                await server.cleanup()

    for kind in BATCH_KINDS:
        batch.register(kind, app_settings)
    batch.register_job_watch(app_settings)
    batch.register_pod_watch(app_settings)
    inference.register(app_settings)


@dataclass(frozen=True)
class RunOptions:
    """How one operator process joins the cluster.

    With ``peering`` set, replicas of the operator find each other through kopf's
    peering object and only the one with the highest priority acts; the others pause
    until it goes away. Equal priorities freeze every replica (kopf's rule), so a
    replica with no explicit priority draws a random one.
    """

    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    metrics_port: int = 8080
    health_port: int = 0
    log_format: str = "json"
    peering: str | None = None
    priority: int | None = None


def peer_priority(explicit: int | None) -> int:
    """The explicit priority, or a random one: ties among replicas freeze them all."""
    if explicit is not None:
        return explicit
    return secrets.randbelow(2**31 - 1) + 1


def run(options: RunOptions) -> int:
    kopf.configure(
        verbose=False,
        log_format=kopf.LogFormat.JSON if options.log_format == "json" else kopf.LogFormat.FULL,
    )
    metrics.serve(options.metrics_port)
    import modelsmith.kopf_entry  # noqa: F401  (registers the handlers)

    if options.peering:
        kubeconfig.load_config()
        k8s.ensure_peering(options.peering, [] if options.all_namespaces else options.namespaces)
    health = f"http://0.0.0.0:{options.health_port}/healthz" if options.health_port else None
    kopf.run(
        standalone=options.peering is None,
        peering_name=options.peering,
        priority=peer_priority(options.priority) if options.peering else None,
        liveness_endpoint=health,
        clusterwide=options.all_namespaces or not options.namespaces,
        namespaces=options.namespaces,
    )
    return 0
