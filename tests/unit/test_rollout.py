"""The rollout bookkeeping around the canary decision: which revisions live, the split,
conditions and events, from status + readiness + samples. Pure, so no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from modelsmith.api.canary import CanaryStage, Decision
from modelsmith.api.inference import InferenceServiceSpec, InferenceServiceStatus, ServingPhase
from modelsmith.builders.owner import Owner
from modelsmith.builders.revision import placement, revision_name
from modelsmith.builders.router import desired_router, route_table
from modelsmith.builders.traffic import desired_httproute
from modelsmith.canary.decision import Policy
from modelsmith.canary.rollout import Inputs, Plan, next_wake, plan
from modelsmith.config import Settings

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)
OWNER = Owner("InferenceService", "chat", "ml", "uid-1")
GOOD = {"errors": 0.0}
BAD = {"errors": 0.5}


def _spec(model: str = "file:///models/v1", **extra: Any) -> InferenceServiceSpec:
    raw: dict[str, Any] = {
        "model": {"uri": model},
        "canary": {
            "steps": [20, 50],
            "interval": "1m",
            "analysisInterval": "20s",
            "failureLimit": 1,
            "metrics": [{"name": "errors", "builtin": "error-rate", "max": 0.05}],
        },
    }
    return InferenceServiceSpec.model_validate(raw | extra)


def _step(
    spec: InferenceServiceSpec,
    status: InferenceServiceStatus,
    *,
    at: timedelta,
    ready: dict[str, bool],
    samples: dict[str, float | None] | None = None,
    decision: Decision = Decision.AUTO,
    version: str | None = None,
) -> Plan:
    uri = spec.model.uri or ""
    rev = revision_name("chat", spec, uri)
    inputs = Inputs(
        spec,
        rev,
        uri,
        ready,
        samples if samples is not None else {},
        {},
        decision,
        T0 + at,
        1,
        model_version=version,
    )
    return plan(inputs, status)


def _deployed() -> tuple[InferenceServiceStatus, str]:
    """v1 serving alone and ready."""
    spec = _spec()
    first = _step(spec, InferenceServiceStatus(), at=0 * SEC, ready={})
    stable = first.split.stable
    assert first.status.phase == ServingPhase.PENDING and first.live == [stable]
    ready = _step(spec, first.status, at=1 * SEC, ready={stable: True})
    assert ready.status.phase == ServingPhase.READY and ready.status.canary is None
    return ready.status, stable


def test_a_new_model_starts_a_canary_while_stable_keeps_all_traffic_until_ready() -> None:
    status, v1 = _deployed()
    spec = _spec("file:///models/v2")
    started = _step(spec, status, at=10 * SEC, ready={v1: True})
    v2 = started.status.canary.revision if started.status.canary else ""
    assert v2 != v1 and started.live == [v1, v2]
    assert (started.split.stable, started.split.canary, started.split.weight) == (v1, v2, 0)
    assert [e[1] for e in started.events] == ["CanaryStarted"]
    # Not ready for a while: stable stays, nothing moves.
    waiting = _step(spec, started.status, at=40 * SEC, ready={v1: True, v2: False})
    assert waiting.split.weight == 0 and waiting.status.stable_revision == v1


def test_a_good_canary_is_promoted_and_the_old_revision_goes() -> None:
    status, v1 = _deployed()
    spec = _spec("file:///models/v2")
    p = _step(spec, status, at=0 * SEC, ready={v1: True})
    v2 = p.status.canary.revision if p.status.canary else ""
    ready = {v1: True, v2: True}
    weights = []
    for t in range(0, 200, 20):
        p = _step(spec, p.status, at=t * SEC, ready=ready, samples=GOOD)
        weights.append(p.split.weight)
    assert weights[0] == 20 and 50 in weights
    assert max(weights) <= 50
    assert p.status.stable_revision == v2 and p.live == [v2]
    assert p.status.canary and p.status.canary.stage == CanaryStage.PROMOTED
    assert p.status.phase == ServingPhase.READY
    assert [h.reason for h in p.status.canary.history][-1] == "Promoted"


def _versions(p: Plan) -> tuple[str | None, str | None]:
    return p.status.stable_version, p.status.canary_version


def test_each_revision_reports_the_model_version_it_serves() -> None:
    v1_spec, v2_spec, v3_spec = (_spec(f"file:///models/v{i}") for i in (1, 2, 3))
    p = _step(v1_spec, InferenceServiceStatus(), at=0 * SEC, ready={}, version="1.0.0")
    v1 = p.split.stable
    p = _step(v1_spec, p.status, at=1 * SEC, ready={v1: True}, version="1.0.0")
    assert _versions(p) == ("1.0.0", None)
    # A canary of 1.1.0-rc.1 is analysed while 1.0.0 keeps serving as stable.
    p = _step(v2_spec, p.status, at=2 * SEC, ready={v1: True}, version="1.1.0-rc.1")
    v2 = p.status.canary_revision or ""
    assert _versions(p) == ("1.0.0", "1.1.0-rc.1")
    for t in range(20, 220, 20):
        p = _step(
            v2_spec,
            p.status,
            at=t * SEC,
            ready={v1: True, v2: True},
            samples=GOOD,
            version="1.1.0-rc.1",
        )
    assert p.status.stable_revision == v2 and _versions(p) == ("1.1.0-rc.1", None)
    # A bad 2.0.0 is rolled back: the stable version stays what was promoted.
    p = _step(v3_spec, p.status, at=300 * SEC, ready={v2: True}, version="2.0.0")
    v3 = p.status.canary_revision or ""
    assert _versions(p) == ("1.1.0-rc.1", "2.0.0")
    for t in (320, 340, 360):
        p = _step(
            v3_spec, p.status, at=t * SEC, ready={v2: True, v3: True}, samples=BAD, version="2.0.0"
        )
    assert p.status.canary and p.status.canary.stage == CanaryStage.ROLLED_BACK
    assert p.status.stable_revision == v2 and _versions(p) == ("1.1.0-rc.1", None)


def test_a_failing_canary_rolls_back_to_full_stable_and_says_which_check() -> None:
    status, v1 = _deployed()
    spec = _spec("file:///models/v2")
    p = _step(spec, status, at=0 * SEC, ready={v1: True})
    v2 = p.status.canary.revision if p.status.canary else ""
    ready = {v1: True, v2: True}
    p = _step(spec, p.status, at=1 * SEC, ready=ready)  # first weight out
    p = _step(spec, p.status, at=21 * SEC, ready=ready, samples=BAD)
    assert p.status.canary and p.status.canary.stage == CanaryStage.PROGRESSING
    p = _step(spec, p.status, at=41 * SEC, ready=ready, samples=BAD)
    assert p.status.canary and p.status.canary.stage == CanaryStage.ROLLED_BACK
    assert (p.split.stable, p.split.canary, p.split.weight) == (v1, None, 0)
    assert p.scaled_down == v2 and set(p.live) == {v1, v2}
    rolled = next(c for c in p.status.conditions if c.type == "RolledBack")
    assert rolled.status == "True" and "errors = 0.5 (max 0.05)" in rolled.message
    assert p.status.phase == ServingPhase.DEGRADED
    assert any(e[0] == "Warning" and "errors = 0.5" in e[2] for e in p.events)
    # The spec still names v2: it is not retried by itself.
    again = _step(spec, p.status, at=100 * SEC, ready=ready, samples=GOOD)
    assert again.split.weight == 0 and again.status.stable_revision == v1


def test_without_a_canary_spec_the_new_revision_replaces_the_old_when_ready() -> None:
    status, v1 = _deployed()
    spec = _spec("file:///models/v2", canary=None)
    p = _step(spec, status, at=0 * SEC, ready={v1: True})
    v2 = p.status.canary.revision if p.status.canary else ""
    assert p.split.stable == v1 and v2 in p.live
    p = _step(spec, p.status, at=5 * SEC, ready={v1: True, v2: True})
    assert p.status.stable_revision == v2 and p.live == [v2]


def test_reverting_the_spec_mid_rollout_rolls_back() -> None:
    status, v1 = _deployed()
    p = _step(_spec("file:///models/v2"), status, at=0 * SEC, ready={v1: True})
    back = _step(_spec(), p.status, at=5 * SEC, ready={v1: True})
    assert back.status.canary and back.status.canary.stage == CanaryStage.ROLLED_BACK
    assert back.events[0][1] == "SpecReverted" and back.live == [v1]


def test_manual_promote_and_shadow_mirror() -> None:
    status, v1 = _deployed()
    spec = _spec(
        "file:///models/v2", canary={"maxWeight": 30, "stepWeight": 10, "mirrorPercent": 25}
    )
    p = _step(spec, status, at=0 * SEC, ready={v1: True})
    assert p.status.canary and p.status.canary.stage == CanaryStage.SHADOW
    assert (p.split.weight, p.split.mirror_percent) == (0, 25)
    assert next_wake(p.status, Policy.of(spec), T0) is not None
    v2 = p.status.canary.revision
    done = _step(spec, p.status, at=1 * SEC, ready={v1: True, v2: True}, decision=Decision.PROMOTE)
    assert done.status.stable_revision == v2 and done.split.mirror_percent == 0
    assert next_wake(done.status, Policy.of(spec), T0) is None


def test_revision_identity_and_route_table() -> None:
    spec = _spec()
    assert revision_name("chat", spec, "a") != revision_name("chat", spec, "b")
    scaled = _spec(replicas=5)
    assert revision_name("chat", spec, "a") == revision_name("chat", scaled, "a")
    limited = _spec(limits={"maxTokens": 16})
    assert revision_name("chat", spec, "a") != revision_name("chat", limited, "a")
    from modelsmith.routes import Split

    table = route_table(OWNER, Split("chat-a", "chat-b", 30, 10))
    assert [(r.name, r.weight) for r in table.revisions] == [("chat-a", 70), ("chat-b", 30)]
    assert table.mirror and table.mirror.revision == "chat-b"
    assert table.revisions[0].url == "http://chat-a.ml.svc:8080"
    alone = route_table(OWNER, Split("chat-a", None, 30))
    assert [(r.name, r.weight) for r in alone.revisions] == [("chat-a", 100)]


def test_router_may_read_its_one_configmap_and_nothing_else() -> None:
    objs = desired_router(OWNER, Settings("reg", "t"))
    role = next(o for o in objs if o["kind"] == "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["chat-routes"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    service = next(o for o in objs if o["kind"] == "Service")
    assert service["metadata"]["name"] == "chat"


ON_NODE = {
    "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def test_placement_reaches_the_server_and_router_pods_and_makes_a_revision() -> None:
    from modelsmith.builders.revision import Revision, desired_revision_deployment

    placed = _spec(**ON_NODE)
    uri = "pvc://models/chat"
    rev = Revision(revision_name("chat", placed, uri), placed, uri)
    server = desired_revision_deployment(OWNER, rev, Settings("reg", "t"), 1)
    pod = server["spec"]["template"]["spec"]
    assert (pod["nodeSelector"], pod["tolerations"]) == (
        ON_NODE["nodeSelector"],
        ON_NODE["tolerations"],
    )
    router = next(
        o
        for o in desired_router(OWNER, Settings("reg", "t"), placement(placed))
        if o["kind"] == "Deployment"
    )
    assert router["spec"]["template"]["spec"]["nodeSelector"] == ON_NODE["nodeSelector"]
    assert revision_name("chat", placed, "a") != revision_name("chat", _spec(), "a")
    bare = desired_router(OWNER, Settings("reg", "t"), placement(_spec()))
    assert (
        "nodeSelector"
        not in next(o for o in bare if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    )


def test_revision_names_of_unplaced_services_did_not_change() -> None:
    """Names made before placement existed: an operator upgrade must not start a canary."""
    assert revision_name("chat", _spec(), "file:///models/v1") == "chat-831dc3dda2"


def test_httproute_splits_pins_and_mirrors() -> None:
    from modelsmith.api.inference import GatewayRef
    from modelsmith.routes import Split

    route = desired_httproute(OWNER, GatewayRef(name="gw"), Split("chat-a", "chat-b", 20, 5))
    rules = route["spec"]["rules"]
    assert rules[-1]["backendRefs"] == [
        {"name": "chat-a", "port": 8080, "weight": 80},
        {"name": "chat-b", "port": 8080, "weight": 20},
    ]
    assert rules[-1]["filters"][0]["requestMirror"]["percent"] == 5
    pinned = {
        r["backendRefs"][0]["name"]: r["matches"][0]["headers"][0]["value"] for r in rules[:-1]
    }
    assert pinned == {"chat-a": "chat-a", "chat-b": "chat-b"}


def _revision(**extra: Any) -> Any:
    from modelsmith.builders.revision import Revision

    spec = _spec(**extra)
    return Revision(revision_name("chat", spec, "file:///models/v1"), spec, "file:///models/v1")


def test_vllm_runtime_runs_vllms_openai_server_from_the_same_spec() -> None:
    from modelsmith.builders.revision import desired_revision_deployment

    rev = _revision(
        runtime="vllm",
        apiKeySecret={"name": "keys"},
        batching={"maxBatchSize": 48},
        resources={"gpus": 1},
    )
    deploy = desired_revision_deployment(OWNER, rev, Settings("reg", "t"), replicas=2)
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("vllm/vllm-openai:")
    assert "--model=/models/v1" in container["args"]
    assert "--served-model-name=chat" in container["args"]
    assert "--max-num-seqs=48" in container["args"]
    key = next(e for e in container["env"] if e["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "keys", "key": "api-key"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["volumes"] == [], "vLLM takes flags, not our task config"
    assert deploy["spec"]["replicas"] == 2


def test_builtin_runtime_mounts_its_task_config_and_api_key() -> None:
    from modelsmith.builders.revision import desired_revision_deployment

    rev = _revision(apiKeySecret={"name": "keys", "key": "k"})
    deploy = desired_revision_deployment(OWNER, rev, Settings("reg", "t"), replicas=None)
    assert "replicas" not in deploy["spec"], "an HPA owns the count"
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "reg/server:t" and container["args"][0] == "serve"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELSMITH_API_KEY_FILE"] == "/var/run/secrets/modelsmith.io/api-key/k"
    assert {v["name"] for v in pod["volumes"]} == {"task-config", "api-key"}
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_hpa_on_cpu_or_on_requests_in_flight() -> None:
    from modelsmith.api.inference import Autoscaling
    from modelsmith.builders.revision import desired_hpa

    cpu = desired_hpa(OWNER, "chat-a", Autoscaling(maxReplicas=4, metric="cpu"))
    assert cpu["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    busy = desired_hpa(OWNER, "chat-a", Autoscaling(maxReplicas=4, targetConcurrency=6))
    pods = busy["spec"]["metrics"][0]["pods"]
    assert pods["metric"]["name"] == "vllm_num_requests_running"
    assert pods["target"] == {"type": "AverageValue", "averageValue": "6"}
    assert busy["spec"]["scaleTargetRef"]["name"] == "chat-a"
    assert busy["spec"]["minReplicas"] == 1


def test_ready_says_why_a_crashing_first_revision_serves_nothing() -> None:
    spec = _spec()
    first = _step(spec, InferenceServiceStatus(), at=0 * SEC, ready={})
    rev = first.split.stable
    why = "pod p: container server exited 1 (3 restarts): ModuleNotFoundError: No module"
    inputs = Inputs(spec, rev, "x", {rev: False}, {}, {}, Decision.AUTO, T0, 1, failing={rev: why})
    failing = plan(inputs, first.status)
    (ready,) = [c for c in failing.status.conditions if c.type == "Ready"]
    assert (ready.status, ready.reason) == ("False", "RevisionFailing")
    assert ready.message == f"revision {rev} is failing: {why}"
    assert failing.status.phase == ServingPhase.PENDING
    # Once its pods recover, the reason goes with them.
    served = _step(spec, failing.status, at=5 * SEC, ready={rev: True})
    (ready,) = [c for c in served.status.conditions if c.type == "Ready"]
    assert (ready.status, ready.reason) == ("True", "Serving")
