"""Argo CD health checks (argocd/resource_customizations), the argocd-cm generator, and
the example Applications.

The Lua runs in a real Lua 5.1 (lupa), the language version of Argo CD's gopher-lua,
with only the libraries Argo CD opens for custom checks (base, table, package, a safe
os), so a script that leans on string or math fails here as it would in Argo CD.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsmith import argocd
from modelsmith.api import INFERENCESERVICE, KINDS
from modelsmith.api.canary import CanaryStage, Decision
from modelsmith.api.common import BatchStatus, Phase
from modelsmith.api.inference import InferenceServiceSpec, InferenceServiceStatus, ServingPhase
from modelsmith.api.meta import ConditionStatus
from modelsmith.batchkinds import BATCH_KINDS
from modelsmith.builders.revision import revision_name
from modelsmith.canary.rollout import Inputs, plan
from modelsmith.conditions import Reason, get_condition
from modelsmith.contract import ErrorInfo
from modelsmith.jobstatus import PodReport, compute_status, waiting_status
from modelsmith.validation import semantic_errors

lupa = pytest.importorskip("lupa.lua51")

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "argocd"
CHECKS = ARGOCD / "resource_customizations" / "modelsmith.io"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
BATCH = [k.info.kind for k in BATCH_KINDS]

# What gopher-lua has when Argo CD runs a check from argocd-cm: util/lua/lua.go opens
# package, base, table and its own os subset, nothing else. The string metatable goes
# too, so ("x"):find() fails as it does there.
_SANDBOX = """
local os_ = {time = os.time, date = os.date, clock = os.clock, difftime = os.difftime}
getmetatable("").__index = nil
string, math, io, debug = nil, nil, nil, nil
package.loaded.string, package.loaded.math, package.loaded.io = nil, nil, nil
package.loaded.debug = nil
os = os_
package.loaded.os = os_
"""


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON-shaped Python to Lua as Argo CD decodes an object: maps become tables,
    lists 1-based tables, nulls absent; timestamps stay strings, as the API sends them."""
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def run_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lupa.LuaRuntime()
    runtime.execute(_SANDBOX)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute((CHECKS / kind / "health.lua").read_text())
    assert lupa.lua_type(result) == "table", f"{kind}: health.lua must return a table"
    return result["status"], result["message"]


@dataclass(frozen=True)
class Case:
    kind: str
    input_path: str
    status: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{Path(self.input_path).stem}"


def _cases() -> Iterator[Case]:
    for test_file in sorted(CHECKS.glob("*/health_test.yaml")):
        for test in yaml.safe_load(test_file.read_text())["tests"]:
            expected = test["healthStatus"]
            yield Case(
                test_file.parent.name, test["inputPath"], expected["status"], expected["message"]
            )


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_health_lua_gives_the_expected_status_and_message(case: Case) -> None:
    obj = yaml.safe_load((CHECKS / case.kind / case.input_path).read_text())
    assert obj["kind"] == case.kind
    assert run_health(case.kind, obj) == (case.status, case.message)


@pytest.mark.parametrize("kind", [info.kind for info in KINDS])
def test_every_kind_has_a_check_its_tests_and_every_status_it_can_be_in(kind: str) -> None:
    folder = CHECKS / kind
    assert (folder / "health.lua").is_file()
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    paths = {t["inputPath"] for t in tests}
    assert len(paths) == len(tests), "each testdata file once"
    assert paths == {f"testdata/{p.name}" for p in (folder / "testdata").glob("*.yaml")}
    statuses = {t["healthStatus"]["status"] for t in tests}
    assert statuses <= ARGO_STATUSES
    assert statuses >= {"Progressing", "Healthy", "Degraded", "Suspended"}
    assert "testdata/no_status.yaml" in paths


def test_no_stray_kinds_and_the_batch_kinds_share_one_script() -> None:
    assert {p.name for p in CHECKS.iterdir()} == {info.kind for info in KINDS}
    scripts = {(CHECKS / kind / "health.lua").read_text() for kind in BATCH}
    assert len(scripts) == 1, "the four batch kinds' health.lua drifted apart"


def test_a_script_that_needs_the_string_library_fails_here_as_in_argo_cd() -> None:
    runtime = lupa.LuaRuntime()
    runtime.execute(_SANDBOX)
    with pytest.raises(lupa.LuaError):
        runtime.execute('return ("Ready"):lower()')
    with pytest.raises(lupa.LuaError):
        runtime.execute("return string.find('a', 'a')")
    assert runtime.execute("return table.concat({'a', 'b'}, ',')") == "a,b"


# The checks against the operator's own status computation. --------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _obj(kind: str, status: BatchStatus | InferenceServiceStatus, generation: int = 1) -> Any:
    return {
        "apiVersion": "modelsmith.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "models", "generation": generation},
        "spec": {},
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def _batch_health(status: BatchStatus) -> tuple[str, str | None]:
    """What the operator's own summary means in Argo CD's terms, and which condition
    says why."""
    ready = get_condition(status.conditions, "Ready")
    degraded = get_condition(status.conditions, "Degraded")
    suspended = get_condition(status.conditions, "Suspended")
    if degraded is not None and degraded.status == ConditionStatus.TRUE:
        return "Degraded", degraded.message
    if status.phase == Phase.FAILED:
        failed = get_condition(status.conditions, "Failed")
        return "Degraded", failed.message if failed else None
    if status.phase == Phase.SUCCEEDED:
        return "Healthy", ready.message if ready else None
    if suspended is not None and suspended.status == ConditionStatus.TRUE:
        return "Suspended", suspended.message
    return "Progressing", ready.message if ready else None


def _job(state: str) -> dict[str, Any] | None:
    status: dict[str, Any] = {"startTime": "2026-03-02T09:00:05Z"}
    spec = {"suspend": state == "suspended"}
    if state == "created":
        status["active"] = 0
    elif state == "running":
        status["active"] = 2
    elif state == "complete":
        status |= {"succeeded": 2, "completionTime": "2026-03-02T10:00:00Z"}
        status["conditions"] = [{"type": "Complete", "status": "True"}]
    elif state == "failed":
        status["failed"] = 4
        status["conditions"] = [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    return {"spec": spec, "status": status} if state != "absent" else None


WAITING = {
    "waiting": (Reason.WAITING_FOR_INPUT, "waiting for: DataPipeline/corpus"),
    "not-found": (Reason.UPSTREAM_NOT_FOUND, "upstream not found: DataPipeline/corpus"),
    "upstream-failed": (Reason.UPSTREAM_FAILED, "upstream failed: DataPipeline/corpus"),
}
JOB_STATES = ["absent", "created", "running", "suspended"]
# Inputs resolve (or fail) first, then the Job runs, is suspended and resumed, and ends.
batch_histories = st.tuples(
    st.lists(st.sampled_from(["waiting", "not-found"]), max_size=3),
    st.sampled_from(["upstream-failed", "ready"]),
    st.lists(st.sampled_from(JOB_STATES), max_size=6),
    st.sampled_from(["complete", "failed", "none"]),
)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(BATCH), history=batch_histories)
def test_batch_health_agrees_with_the_operators_status(
    kind: str, history: tuple[list[str], str, list[str], str]
) -> None:
    waits, resolved, job_states, end = history
    steps = [*waits, *([resolved] if resolved == "upstream-failed" else [*job_states, end])]
    status = BatchStatus()
    for i, step in enumerate(steps):
        now = T0 + timedelta(minutes=i)
        if step in WAITING:
            reason, message = WAITING[step]
            status = waiting_status(status, generation=1, now=now, reason=reason, message=message)
        elif step != "none":
            failure = ErrorInfo(reason="NaNLoss", message="loss is NaN at step 40")
            pods = PodReport(failure=failure) if step == "failed" else None
            status = compute_status(
                status, _job(step), generation=1, output_uri="file:///o", now=now, pods=pods
            )
        if status.conditions:
            assert run_health(kind, _obj(kind, status)) == _batch_health(status), steps[: i + 1]


SPEC: dict[str, Any] = {
    "model": {"uri": "file:///models/v1"},
    "canary": {
        "steps": [20, 50],
        "interval": "1m",
        "analysisInterval": "20s",
        "failureLimit": 1,
        "inconclusiveLimit": 1,
        "progressDeadlineSeconds": 120,
        "metrics": [
            {"name": "errors", "builtin": "error-rate", "max": 0.05},
            {"name": "rps", "query": "sum(rate(x[1m]))", "min": 1, "onEmpty": "skip"},
        ],
    },
}
SAMPLES: dict[str, dict[str, float | None] | None] = {
    "good": {"errors": 0.0, "rps": 5.0},
    "bad": {"errors": 0.5, "rps": 5.0},
    "empty": {"errors": 0.0, "rps": None},
    "prometheus-down": None,
}


def _serving_health(status: InferenceServiceStatus) -> tuple[str, str | None]:
    ready = get_condition(status.conditions, "Ready")
    progressing = get_condition(status.conditions, "Progressing")
    canary = status.canary
    if status.phase in (ServingPhase.FAILED, ServingPhase.DEGRADED):
        rolled_back = get_condition(status.conditions, "RolledBack")
        message = rolled_back.message if rolled_back else None
        if not message and canary is not None and canary.history:
            message = canary.history[-1].message
        return "Degraded", message
    if status.phase == ServingPhase.READY:
        return "Healthy", ready.message if ready else None
    if status.phase == ServingPhase.PROGRESSING:
        paused = canary is not None and canary.stage == CanaryStage.PAUSED
        health = "Suspended" if paused else "Progressing"
        return health, progressing.message if progressing else None
    return "Progressing", ready.message if ready else None


serving_histories = st.lists(
    st.tuples(
        st.sampled_from(["v1", "v2", "v3"]),
        st.booleans(),
        st.sampled_from(["good"] * 3 + ["bad", "empty", "empty", "prometheus-down"] * 2),
        st.sampled_from([Decision.AUTO] * 8 + [Decision.PROMOTE, Decision.ABORT]),
        st.sampled_from([1, 25, 70]),
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=100, deadline=None)
@given(history=serving_histories)
def test_inferenceservice_health_agrees_with_the_operators_status(
    history: list[tuple[str, bool, str, Decision, int]],
) -> None:
    """Random walks through versions, readiness, analyses, manual decisions and time:
    whatever the rollout reaches, the Lua check reads it as the operator's phase says."""
    for status in _rollout(history):
        obj = _obj(INFERENCESERVICE.kind, status)
        assert run_health(INFERENCESERVICE.kind, obj) == _serving_health(status), status


# (version, canary ready, samples, decision, seconds later) per reconcile.
Step = tuple[str, bool, str, Decision, int]
A = Decision.AUTO
DEPLOYED: list[Step] = [("v1", True, "good", A, 1)]
TO_V2_FIRST_STEP: list[Step] = [*DEPLOYED, ("v2", True, "good", A, 1), ("v2", True, "good", A, 1)]
ROLLOUTS: dict[str, tuple[list[Step], dict[str, Any], str, CanaryStage | None]] = {
    "serving": (DEPLOYED, {}, "Healthy", None),
    "first-revision-not-ready": ([("v1", False, "good", A, 1)], {}, "Progressing", None),
    "canary-waits-for-readiness": (
        [*DEPLOYED, ("v2", False, "good", A, 1)],
        {},
        "Progressing",
        CanaryStage.PROGRESSING,
    ),
    "canary-at-first-step": (TO_V2_FIRST_STEP, {}, "Progressing", CanaryStage.PROGRESSING),
    "shadow": (
        [*DEPLOYED, ("v2", True, "good", A, 1)],
        {"mirrorPercent": 10},
        "Progressing",
        CanaryStage.SHADOW,
    ),
    "prometheus-down": (
        [*TO_V2_FIRST_STEP, ("v2", True, "prometheus-down", A, 21)],
        {},
        "Suspended",
        CanaryStage.PAUSED,
    ),
    "inconclusive": (
        [*TO_V2_FIRST_STEP, *[("v2", True, "empty", A, 21)] * 2],
        {},
        "Suspended",
        CanaryStage.PAUSED,
    ),
    "analysis-failed": (
        [*TO_V2_FIRST_STEP, *[("v2", True, "bad", A, 21)] * 2],
        {},
        "Degraded",
        CanaryStage.ROLLED_BACK,
    ),
    "aborted": (
        [*TO_V2_FIRST_STEP, ("v2", True, "good", Decision.ABORT, 1)],
        {},
        "Degraded",
        CanaryStage.ROLLED_BACK,
    ),
    "spec-reverted": (
        [*TO_V2_FIRST_STEP, ("v1", True, "good", A, 1)],
        {},
        "Degraded",
        CanaryStage.ROLLED_BACK,
    ),
    "promoted": (
        [*TO_V2_FIRST_STEP, *[("v2", True, "good", A, 21)] * 6],
        {},
        "Healthy",
        CanaryStage.PROMOTED,
    ),
    "promoted-by-hand": (
        [*TO_V2_FIRST_STEP, ("v2", True, "good", Decision.PROMOTE, 1)],
        {},
        "Healthy",
        CanaryStage.PROMOTED,
    ),
}


def _rollout(
    steps: list[Step], canary: dict[str, Any] | None = None
) -> Iterator[InferenceServiceStatus]:
    """The status after each reconcile. The flag is the readiness of the revision the
    spec names; a different stable revision stays ready."""
    status = InferenceServiceStatus()
    at = T0
    for version, revision_ready, samples, decision, seconds in steps:
        raw = SPEC | {"model": {"uri": f"file:///{version}"}}
        if canary is not None:
            raw["canary"] = SPEC["canary"] | canary
        spec = InferenceServiceSpec.model_validate(raw)
        revision = revision_name("chat", spec, f"file:///{version}")
        ready = {status.stable_revision: True} if status.stable_revision else {}
        ready[revision] = revision_ready
        at += timedelta(seconds=seconds)
        inputs = Inputs(
            spec, revision, f"file:///{version}", ready, SAMPLES[samples], {}, decision, at, 1
        )
        status = plan(inputs, status).status
        yield status


@pytest.mark.parametrize("name", sorted(ROLLOUTS))
def test_inferenceservice_health_of_each_rollout_stage(name: str) -> None:
    steps, canary, health, stage = ROLLOUTS[name]
    *_, status = _rollout(steps, canary)
    assert (status.canary.stage if status.canary else None) == stage
    got = run_health(INFERENCESERVICE.kind, _obj(INFERENCESERVICE.kind, status))
    assert got == _serving_health(status)
    assert got[0] == health and got[1]


def test_a_status_for_an_older_generation_is_progressing() -> None:
    """The operator has not seen the latest spec yet, whatever the status says."""
    done = compute_status(
        BatchStatus(), _job("complete"), generation=1, output_uri="file:///o", now=T0
    )
    *_, serving = _rollout(DEPLOYED)
    for kind in BATCH:
        assert run_health(kind, _obj(kind, done, generation=2)) == (
            "Progressing",
            "Waiting for the operator to observe generation 2",
        )
    assert run_health(INFERENCESERVICE.kind, _obj(INFERENCESERVICE.kind, serving, 2)) == (
        "Progressing",
        "Waiting for the operator to observe generation 2",
    )


# The argocd-cm generator. -----------------------------------------------------------


@pytest.mark.parametrize("helm_values", [False, True])
def test_argocd_cm_holds_each_kinds_script_verbatim(helm_values: bool) -> None:
    rendered = yaml.safe_load(argocd.render(helm_values=helm_values))
    data = rendered["configs"]["cm"] if helm_values else rendered["data"]
    assert set(rendered) == ({"configs"} if helm_values else {"data"})
    assert data == {
        f"resource.customizations.health.modelsmith.io_{info.kind}": (
            CHECKS / info.kind / "health.lua"
        ).read_text()
        for info in KINDS
    }


def test_argocd_cm_command_prints_the_patch(capsys: pytest.CaptureFixture[str]) -> None:
    assert argocd.main([]) == 0
    assert capsys.readouterr().out == argocd.render()


def test_argocd_cm_refuses_a_folder_missing_a_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "DataPipeline").mkdir()
    (tmp_path / "DataPipeline" / "health.lua").write_text("return {}\n")
    assert argocd.main(["--dir", str(tmp_path)]) == 1
    assert "no health.lua for PretrainJob, FineTune" in capsys.readouterr().err


# The example Applications and the chain they sync. ---------------------------------

WAVE = "argocd.argoproj.io/sync-wave"


def _chain() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [
        doc
        for path in sorted((ARGOCD / "chain").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _refs(node: Any) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        ref = node.get("fromRef")
        if isinstance(ref, dict):
            yield ref["kind"], ref["name"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_chain_holds_each_kind_once_in_wave_order() -> None:
    waves = {kind: int(d["metadata"]["annotations"][WAVE]) for (kind, _), d in _chain().items()}
    assert waves == {
        "DataPipeline": 0,
        "PretrainJob": 1,
        "FineTune": 2,
        "QuantizeJob": 3,
        "InferenceService": 4,
    }


def test_every_reference_points_at_an_earlier_wave_of_the_chain() -> None:
    chain = _chain()
    references = 0
    for doc in chain.values():
        for target in _refs(doc["spec"]):
            assert target in chain, f"{doc['kind']} refers to {target}, not in the chain"
            upstream = chain[target]["metadata"]["annotations"][WAVE]
            assert int(upstream) < int(doc["metadata"]["annotations"][WAVE])
            references += 1
    assert references == 4


def test_the_chain_is_valid_and_is_the_samples_chain() -> None:
    samples = {
        (d["kind"], d["metadata"]["name"]): d
        for name in ("datapipeline.yaml", "chain.yaml", "inferenceservice.yaml")
        for d in yaml.safe_load_all((ROOT / "samples" / name).read_text())
    }
    infos = {info.kind: info for info in KINDS}
    batch = {k.info.kind: k for k in BATCH_KINDS}
    for key, doc in _chain().items():
        assert doc["apiVersion"] == "modelsmith.io/v1alpha1"
        assert doc["spec"] == samples[key]["spec"], f"{key} drifted from samples/"
        infos[doc["kind"]].spec.model_validate(doc["spec"])
        if doc["kind"] in batch:
            kind = batch[doc["kind"]]
            spec = kind.parse(doc["spec"])
            assert semantic_errors(kind, doc["metadata"]["name"], spec) == []


def test_the_applications_point_at_the_chart_and_the_chain() -> None:
    apps = {p.stem: yaml.safe_load(p.read_text()) for p in (ARGOCD / "applications").glob("*.yaml")}
    assert set(apps) == {"modelsmith-operator", "model-chain"}
    for app in apps.values():
        assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
        assert app["metadata"]["namespace"] == "argocd"
        assert (ROOT / app["spec"]["source"]["path"]).is_dir()
    operator = apps["modelsmith-operator"]["spec"]
    assert operator["source"]["path"] == "charts/modelsmith"
    assert "ServerSideApply=true" in operator["syncPolicy"]["syncOptions"]
    assert apps["model-chain"]["spec"]["source"]["path"] == "argocd/chain"
