"""One analysis' inputs: the checks' PromQL for this revision, and their values.

The only part of a rollout that talks to Prometheus. Shared by the reconciler and by the
test harness that runs the same rollout against real servers, a real router and a real
Prometheus (tests/workloads/canary_stack.py), so both exercise the same queries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from modelsmith.api.inference import InferenceServiceSpec, InferenceServiceStatus
from modelsmith.canary import promql
from modelsmith.canary.decision import TERMINAL, Policy, resolve_query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Which rollout: the ${namespace} and ${service} of the queries."""

    namespace: str
    service: str


def gather(
    prometheus_url: str | None,
    target: Target,
    spec: InferenceServiceSpec,
    status: InferenceServiceStatus,
    desired: str,
    *,
    ready: bool,
    now: datetime,
    policy: Policy | None,
) -> tuple[Mapping[str, float | None] | None, dict[str, str]]:
    """(samples, queries as sent); Prometheus is asked only when an analysis is due.

    samples None: Prometheus unreachable or not configured, which pauses the rollout.
    ``policy``: ``Policy.of(spec)``, built once by the reconcile that calls this.
    """
    canary = status.canary
    if spec.canary is None or policy is None or canary is None:
        return {}, {}
    if canary.revision != desired or not ready or canary.stage in TERMINAL:
        return {}, {}
    if now - (canary.last_analysis or canary.step_started) < policy.every:
        return {}, {}
    variables = {
        "namespace": target.namespace,
        "service": target.service,
        "revision": desired,
        "interval": spec.canary.interval,
    }
    queries = {c.name: resolve_query(c, variables) for c in policy.checks}
    if not queries:
        return {}, queries
    if prometheus_url is None:
        log.warning("canary of %s/%s: no Prometheus configured; paused", *variables.values())
        return None, queries
    return promql.sample_all(prometheus_url, queries), queries
