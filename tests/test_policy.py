"""The policy file, the service topology and production's state: validation that names the field, the
deploy order, the traffic forecast and error budget, and the deploy slot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.context import ChangeContext, ChangedFile, ServiceState
from agents.environment import error_budget_left, read_metrics_file, service_states, traffic_profile
from agents.policy import DEFAULT_POLICY, load_policy
from agents.rollout import deploy_slot, plan_rollout
from features.errors import BadConfig
from features.topology import SCHEMA_FILE, Slo, Topology, load_topology, topology_schema

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday


def write(tmp_path, name: str, doc) -> object:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def default_doc() -> dict:
    return yaml.safe_load(DEFAULT_POLICY.read_text())


def test_the_default_policy_is_valid_and_versioned():
    policy = load_policy()
    assert policy.version == "default-2026.11"
    assert set(policy.rollout) == {"low", "medium", "high", "critical"}
    assert policy.on_error == "senior_review"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["gates"].update(high="fast_track"), "gates"),
        (lambda d: d["rollout"].pop("critical"), "rollout"),
        (lambda d: d["rollout"]["medium"]["steps"].insert(0, {"set_weight": 90}), "rollout.medium"),
        (lambda d: d["rules"][0].update(require_suites=["soak"]), "(file)|suites"),
        (lambda d: d["tests"]["budget_s"].update(low=-1), "tests.budget_s.low"),
        (lambda d: d["schedule"]["windows"][0].update(start="18:00"), "schedule.windows.0"),
        (lambda d: d.update(on_error="maybe"), "on_error"),
        (lambda d: d["rollout"]["low"].update(bake_time="5 minutes"), "rollout.low.bake_time"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_a_bad_policy_is_an_error_naming_the_file_and_field(tmp_path, change, field):
    doc = default_doc()
    change(doc)
    path = write(tmp_path, "policy.yaml", doc)
    with pytest.raises(BadConfig) as raised:
        load_policy(path)
    message = str(raised.value)
    assert str(path) in message
    assert any(f in message for f in field.split("|")), message


def test_a_policy_that_is_not_yaml_or_absent_is_named(tmp_path):
    with pytest.raises(BadConfig, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")
    with pytest.raises(BadConfig, match="not valid YAML"):
        load_policy(write(tmp_path, "bad.yaml", "rollout: [\n"))


TOPOLOGY = {
    "services": {
        "web": {"paths": ["web/*"], "depends_on": ["api"], "criticality": "medium"},
        "api": {"paths": ["api/*"], "depends_on": ["db"], "criticality": "critical", "owners": ["team-api"]},
        "db": {"paths": ["db/*"], "slos": {"availability": 0.9995, "window_days": 7}},
        "docs": "docs/*",
    }
}


def test_the_topology_reads_the_short_and_full_forms_and_orders_dependencies_first(tmp_path):
    topology = load_topology(write(tmp_path, "services.yaml", TOPOLOGY))
    assert topology.services["docs"].paths == ["docs/*"]
    assert topology.services["api"].owners == ["team-api"]
    assert topology.services["db"].slos.window_days == 7
    assert topology.deploy_order(["web", "api", "db"]) == ["db", "api", "web"]
    assert topology.deploy_order(["web", "db"]) == ["db", "web"]  # through api, which is not shipped


def test_a_dependency_cycle_is_an_error_naming_it(tmp_path):
    doc = json.loads(json.dumps(TOPOLOGY))
    doc["services"]["db"]["depends_on"] = ["web"]
    topology = load_topology(write(tmp_path, "services.yaml", doc))
    with pytest.raises(BadConfig, match=r"cycle .*(web|api|db) -> .*(web|api|db)"):
        topology.deploy_order(["web"])


def test_an_unknown_dependency_names_the_service(tmp_path):
    doc = json.loads(json.dumps(TOPOLOGY))
    doc["services"]["web"]["depends_on"] = ["search"]
    with pytest.raises(BadConfig, match=r"services\.web\.depends_on.*search"):
        load_topology(write(tmp_path, "services.yaml", doc))


def test_the_committed_json_schema_is_the_models_schema_and_accepts_the_example(tmp_path):
    import jsonschema

    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(topology_schema()))
    jsonschema.validate(TOPOLOGY, committed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"web": {"criticality": "extreme"}}}, committed)


@st.composite
def acyclic_topologies(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    names = [f"s{i}" for i in range(n)]
    services = {}
    for i, name in enumerate(names):  # a service depends only on earlier ones: no cycle
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        services[name] = {"paths": [f"{name}/*"], "depends_on": deps}
    shipped = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    return Topology.model_validate({"services": services}), shipped


@given(acyclic_topologies())
@settings(max_examples=60, deadline=None)
def test_the_deploy_order_puts_every_dependency_first(case):
    topology, shipped = case
    order = topology.deploy_order(shipped)
    assert sorted(order) == sorted(shipped)

    def reaches(a: str, b: str, seen=()) -> bool:
        return any(
            d == b or (d not in seen and reaches(d, b, (*seen, d))) for d in topology.services[a].depends_on
        )

    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            assert not reaches(a, b), f"{a} depends on {b} but deploys first"


def hourly(
    service: str, start: datetime, hours: int, base: float, peak_hour: int, errors: float = 0.0
) -> pd.DataFrame:
    stamps = pd.date_range(start, periods=hours, freq="h", tz="UTC")
    requests = np.where(stamps.hour == peak_hour, base * 5, base)
    return pd.DataFrame(
        {"service": service, "timestamp": stamps, "requests": requests.astype(float), "errors": errors}
    )


def test_the_forecast_repeats_the_weekly_profile_and_the_budget_counts_errors():
    history = hourly(
        "api", MONDAY_10 - timedelta(days=28, hours=-1), 28 * 24, 100.0, peak_hour=14, errors=0.05
    )
    profile = traffic_profile(history)
    assert profile is not None and profile.argmax() % 24 == 14
    assert profile.max() == pytest.approx(500.0)
    slo = Slo(availability=0.999, window_days=28)
    # allowed failures: 0.1% of requests; failed: 0.05 per hour
    requests = history["requests"].sum()
    expected = 1 - (0.05 * len(history)) / (0.001 * requests)
    assert error_budget_left(history, slo, MONDAY_10) == pytest.approx(expected)
    states = service_states(["api"], history, None, {"api": slo}, MONDAY_10, 48)
    assert states["api"].traffic_forecast[4] == pytest.approx(500.0)  # 14:00, four hours on
    assert states["api"].traffic_forecast[0] == pytest.approx(100.0)


def test_the_deploy_slot_waits_for_a_window_and_skips_the_peak():
    policy = load_policy()
    forecast = [100.0] * 200
    forecast[0] = forecast[1] = 480.0  # 10:00 and 11:00 are at 96% of the peak
    context = ChangeContext(
        repo="r",
        shas=["a" * 40],
        files=[ChangedFile.of("api/x.py", "api")],
        services=["api"],
        service_states={"api": ServiceState(traffic_forecast=forecast, traffic_peak=500.0)},
        now=MONDAY_10,
    )
    at, _reasons = deploy_slot(context, ["api"], "medium", policy.schedule)
    assert at == MONDAY_10 + timedelta(hours=2)
    saturday = context.model_copy(
        update={"now": datetime(2026, 11, 28, 10, 0, tzinfo=UTC), "service_states": {}}
    )
    at, reasons = deploy_slot(saturday, ["api"], "medium", policy.schedule)
    assert at == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # Monday 09:00, the next window
    assert reasons == ["waits 47 h 0 min for a deploy window"]  # hours and minutes, not a raw timedelta
    late = saturday.model_copy(update={"now": datetime(2026, 11, 30, 8, 20, 30, 5, tzinfo=UTC)})
    assert deploy_slot(late, ["api"], "medium", policy.schedule)[1] == ["waits 40 min for a deploy window"]
    at, _ = deploy_slot(saturday, ["api"], "low", policy.schedule)  # low risk needs no window
    assert at == saturday.now


def test_a_service_short_of_error_budget_gets_the_next_bands_rollout():
    policy = load_policy()
    context = ChangeContext(
        repo="r",
        shas=["a" * 40],
        files=[ChangedFile.of("api/x.py", "api")],
        services=["api"],
        service_states={"api": ServiceState(error_budget_left=0.1)},
        now=MONDAY_10,
    )
    plan = plan_rollout(context, "low", policy)
    assert plan.template_band == "medium" and plan.strategy == "canary"
    assert any("error budget" in r for r in plan.schedule_reasons)


def test_a_metrics_file_with_a_bad_value_names_the_file_column_and_line(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "service,timestamp,requests,errors\napi,2026-11-23T10:00:00Z,100,1\napi,2026-11-23T11:00:00Z,lots,1\n"
    )
    with pytest.raises(BadConfig, match=r"metrics.csv: column 'requests', line 3"):
        read_metrics_file(path)
    path.write_text("service,timestamp,requests\napi,2026-11-23T10:00:00Z,100\n")
    with pytest.raises(BadConfig, match=r"missing column.*errors"):
        read_metrics_file(path)
