"""Every Prometheus series name modelsmith's code exports, read from the collectors the
code really creates: the operator's, the router's, the model server's and each
workload's. Prints {source: [names]} as JSON.

Run as a process of its own (`python -m tests.unit.exported_metrics`): the model
server's metrics live in prometheus-client's default registry, where a second
`ServeMetrics` in the test process (tests/workloads makes one) would be refused, and
the workloads pull in torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
}
"""Family type -> the sample names it exposes (what PromQL can select)."""


def series_names(families: Iterable[Any]) -> set[str]:
    return {f"{f.name}{suffix}" for f in families for suffix in SUFFIXES[f.type]}


def operator_names() -> set[str]:
    from modelsmith import metrics

    collectors = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    return series_names(f for c in collectors for f in c.describe())


def router_names() -> set[str]:
    from modelsmith.router.metrics import RouterMetrics

    return series_names(RouterMetrics().registry.collect())


def server_names() -> set[str]:
    """The server's own series, without what the default registry held before."""
    before = {f.name for f in REGISTRY.collect()}
    from modelsmith_runtime.serve.metrics import ServeMetrics

    ServeMetrics("model", "revision")
    return series_names(f for f in REGISTRY.collect() if f.name not in before)


def workload_names() -> dict[str, set[str]]:
    """Each workload's registry, as its endpoint would serve it (the server itself is
    not started: `start_server` is swapped for one that only fills a registry)."""
    import torch

    from modelsmith.api.finetune import Hyperparameters
    from modelsmith_runtime import gauges
    from modelsmith_runtime.data import telemetry
    from modelsmith_runtime.finetune.loop import Loop
    from modelsmith_runtime.quantize.main import _Telemetry as QuantizeTelemetry
    from modelsmith_runtime.train.metrics import MetricsSink

    registries: list[CollectorRegistry] = []

    def fill(populate: Any) -> None:
        registry = CollectorRegistry()
        populate(registry)
        registries.append(registry)

    gauges.start_server = fill  # type: ignore[assignment]
    telemetry.start_server = fill  # type: ignore[assignment]
    cpu = torch.device("cpu")
    makers = {
        "data": lambda: telemetry.Telemetry(reports_progress=False),
        "pretrain": lambda: MetricsSink(True, None),
        "finetune": lambda: Loop(None, Hyperparameters(), pad_id=0, device=cpu, autocast=None),
        "quantize": QuantizeTelemetry,
    }
    names = {}
    for workload, make in makers.items():
        make()
        names[workload] = series_names(registries.pop().collect())
    return names


def exported() -> dict[str, list[str]]:
    found = {
        "operator": operator_names(),
        "router": router_names(),
        "server": server_names(),
        **workload_names(),
    }
    return {source: sorted(names) for source, names in found.items()}


if __name__ == "__main__":
    print(json.dumps(exported()))
