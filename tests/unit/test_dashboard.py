"""The Grafana dashboard reads only series modelsmith exports.

A renamed metric otherwise leaves a panel silently empty. Every query is parsed as
PromQL (after Grafana's variables are given sample values) and every metric it selects
must be one the code really creates: the names come from the collectors themselves
(tests/unit/exported_metrics.py), not from a list kept by hand.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "modelsmith-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

GRAFANA_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "6h",
}
"""Grafana's built-in variables, which stand where PromQL wants a duration."""
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


@cache
def exported() -> dict[str, frozenset[str]]:
    """{source: series names}, from a fresh interpreter (see exported_metrics.py)."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.unit.exported_metrics"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return {source: frozenset(names) for source, names in json.loads(out).items()}


def exported_names() -> frozenset[str]:
    return frozenset().union(*exported().values())


def substitute(expr: str) -> str:
    """Grafana variables -> values PromQL accepts: durations for the built-in ones; user
    variables only ever stand inside label matchers' strings, so any text will do."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return GRAFANA_VARIABLES.get(name, f"var_{name}")

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects (by name or by a `__name__` matcher);
    ValueError when it is not PromQL."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(
                m.value
                for m in node.matchers.matchers
                if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
            )
        return True

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return names


def problems(expr: str, known: frozenset[str]) -> list[str]:
    """Why a panel query would not show modelsmith's data; empty when it would."""
    try:
        names = metric_names(expr)
    except ValueError as exc:
        return [f"not PromQL ({exc}): {expr}"]
    if not names:
        return [f"selects no metric: {expr}"]
    return [f"{name} is not exported by modelsmith" for name in sorted(names - known)]


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries, rows' nested panels included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["definition"].strip())
        assert match, f"variable {variable['name']}: expected label_values(metric, label)"
        assert match.group(1), f"variable {variable['name']}: label_values without a metric"
        yield f"variable {variable['name']}", match.group(1)


# ------------------------------------------------------------------------ the checker


def test_the_exported_names_come_from_every_source() -> None:
    sources = exported()
    assert set(sources) == {
        "operator",
        "router",
        "server",
        "data",
        "pretrain",
        "finetune",
        "quantize",
    }
    names = exported_names()
    for expected in (
        "modelsmith_reconciles_total",
        "modelsmith_reconcile_seconds_bucket",
        "modelsmith_resources",
        "modelsmith_canary_weight",
        "modelsmith_router_requests_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:generation_tokens_total",
        "modelsmith_train_mfu",
        "modelsmith_data_tokens_total",
    ):
        assert expected in names
    # A histogram exposes no series under its own name, a counter none without _total.
    assert "modelsmith_reconcile_seconds" not in names
    assert "modelsmith_reconciles" not in names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(modelsmith_reconciles_total[$__rate_interval]))", set()),
        # A misspelled metric: the panel would be empty.
        (
            "sum(rate(modelsmith_reconcile_total[5m]))",
            {"modelsmith_reconcile_total is not exported by modelsmith"},
        ),
        # A histogram by its bare name: PromQL accepts it, Prometheus has no such series.
        (
            "histogram_quantile(0.9, rate(modelsmith_reconcile_seconds[5m]))",
            {"modelsmith_reconcile_seconds is not exported by modelsmith"},
        ),
        (
            'count({__name__="vllm:time_to_first_token_seconds_count"})'
            ' + count({__name__="vllm:ttft_seconds_count"})',
            {"vllm:ttft_seconds_count is not exported by modelsmith"},
        ),
    ],
)
def test_the_checker_names_the_metrics_modelsmith_does_not_export(
    expr: str, expected: set[str]
) -> None:
    assert set(problems(expr, exported_names())) == expected


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(modelsmith_reconciles_total[5m])",
        "rate(modelsmith_reconciles_total[$unknown_duration])",
        "sum by kind (modelsmith_resources)",
    ],
)
def test_the_checker_rejects_what_is_not_promql(expr: str) -> None:
    [problem] = problems(expr, exported_names())
    assert problem.startswith("not PromQL")


def test_a_query_selecting_no_metric_is_rejected() -> None:
    assert problems("vector(1)", exported_names()) == ["selects no metric: vector(1)"]


def test_a_dashboard_with_a_misspelled_metric_is_rejected() -> None:
    dashboard = load()
    target = next(panels(dashboard))["targets"][0]
    target["expr"] = target["expr"].replace("modelsmith_", "modelsmth_", 1)
    found = [p for _, expr in queries(dashboard) for p in problems(expr, exported_names())]
    assert len(found) == 1
    assert "modelsmth_" in found[0]


# ------------------------------------------------------------------------ the dashboard


def test_the_dashboard_is_a_grafana_dashboard_model() -> None:
    dashboard = load()
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["type"] == "query"
    ids = [p["id"] for p in dashboard["panels"]] + [
        p["id"] for r in dashboard["panels"] for p in r.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_the_dashboard_has_operator_training_and_serving_rows() -> None:
    rows = [p["title"] for p in load()["panels"] if p["type"] == "row"]
    assert rows == ["Operator", "Training", "Serving"]


def test_every_panel_has_the_prometheus_datasource_and_a_query() -> None:
    for panel in panels(load()):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_every_query_parses_and_reads_only_exported_metrics() -> None:
    known = exported_names()
    found = [f"{where}: {p}" for where, expr in queries(load()) for p in problems(expr, known)]
    assert not found, "\n".join(found)


def test_the_dashboard_reads_each_source_modelsmith_exports() -> None:
    used = set().union(*(metric_names(expr) for _, expr in queries(load())))
    for source, names in exported().items():
        assert used & names, f"no panel reads the {source}'s metrics"
