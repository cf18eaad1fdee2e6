"""How the dev cluster is doing: each component's health check, and what `dev status`
reports of its processes."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from modelsmith.devcluster import pki
from modelsmith.devcluster.components import Component


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int
    port: int
    running: bool
    healthy: bool


@dataclass(frozen=True)
class ClusterStatus:
    home: Path
    components: list[ComponentStatus]
    server: str

    @property
    def running(self) -> bool:
        return bool(self.components) and all(c.running and c.healthy for c in self.components)

    @property
    def stopped(self) -> bool:
        return not any(c.running for c in self.components)


def healthy(component: Component, certs: pki.PKIPaths) -> bool:
    """Whether the component's health endpoint answers 200 (as the admin, where it
    authenticates its clients)."""
    verify: ssl.SSLContext | bool = False  # self-signed serving certs of kcm/scheduler
    if component.authenticated:
        if not certs.ca_cert.exists():
            return False
        verify = ssl.create_default_context(cafile=str(certs.ca_cert))
        verify.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
    try:
        resp = httpx.get(component.health_url, timeout=2.0, verify=verify)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200
