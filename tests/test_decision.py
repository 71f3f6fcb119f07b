"""`decide(context, policy)`: the gate, the test plan and the rollout plan, pinned rule by rule with literal
contexts (as Argo Rollouts pins its analysis rules), and the invariants as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.context import ChangeContext, ChangedFile, OpenIncident, Risk, RiskDriver, ServiceState
from agents.decision import decide, output_schema
from agents.policy import load_policy
from agents.vocabulary import gate_level
from features.topology import Topology

MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = load_policy()
TOPOLOGY = Topology.model_validate(
    {
        "services": {
            "web": {"paths": ["web/*"], "depends_on": ["api"]},
            "api": {"paths": ["api/*"], "depends_on": ["db"], "criticality": "high"},
            "db": {"paths": ["db/*"], "criticality": "critical"},
        }
    }
)


def risk(probability: float, **features: float) -> Risk:
    drivers = [RiskDriver(feature=k, value=v, contribution=0.4) for k, v in features.items()]
    values = {"la": 10.0, "ld": 2.0, "nf": 1.0, **features}
    return Risk(
        probability=probability, drivers=drivers, features=values, model_name="change-risk", model_version="3"
    )


def context(files: list[tuple[str, str]], probability: float | None = 0.01, **extra) -> ChangeContext:
    changed = [ChangedFile.of(path, service, 10, 2) for path, service in files]
    return ChangeContext(
        repo="shop",
        shas=["a" * 40],
        files=changed,
        services=sorted({f.service for f in changed}),
        risk=None if probability is None else risk(probability),
        risk_error=None if probability is not None else "tracking server unavailable",
        topology=TOPOLOGY,
        now=MONDAY_10,
        **extra,
    )


def test_a_safe_docs_change_is_fast_tracked_with_unit_tests_only():
    decision = decide(context([("web/locale/fr.po", "web"), ("web/README.md", "web")], 0.005), POLICY)
    assert decision.gate == "fast_track" and decision.exit_code == 0
    assert [s.name for s in decision.test_plan.suites] == ["unit"]
    assert decision.rollout_plan.strategy == "rolling"


def test_a_migration_always_runs_the_performance_suite_and_is_never_fast_tracked():
    decision = decide(context([("db/migrations/0042_add_index.sql", "db")], 0.005), POLICY)
    assert decision.gate != "fast_track"
    performance = [s for s in decision.test_plan.suites if s.name == "performance"]
    assert performance and performance[0].mandatory and performance[0].resource == "perf-env"
    assert "migrations-need-performance" in decision.rules_fired


def test_a_very_risky_change_is_blocked_and_ships_blue_green():
    decision = decide(context([("api/payments.py", "api")], 0.97), POLICY)
    assert decision.band == "critical" and decision.gate == "block" and decision.exit_code == 4
    assert decision.rollout_plan.strategy == "blue-green"
    assert any(r.kind == "driver" for r in decision.reasons) or decision.reasons[0].kind == "band"


def test_an_unscored_change_gets_the_on_error_gate_and_says_why():
    decision = decide(context([("api/payments.py", "api")], None), POLICY)
    assert decision.gate == POLICY.on_error == "senior_review" and decision.exit_code == 3
    assert decision.band is None and "tracking server unavailable" in (decision.fallback or "")


def test_an_open_incident_or_a_spent_error_budget_tightens_the_gate():
    incident = OpenIncident(incident_id="INC-7", severity="critical", started_at=MONDAY_10)
    calm = decide(context([("api/handlers.py", "api")], 0.005), POLICY)
    burning = decide(
        context(
            [("api/handlers.py", "api")],
            0.005,
            service_states={"api": ServiceState(open_incidents=[incident])},
        ),
        POLICY,
    )
    spent = decide(
        context(
            [("api/handlers.py", "api")], 0.005, service_states={"api": ServiceState(error_budget_left=-0.2)}
        ),
        POLICY,
    )
    assert gate_level(burning.gate) >= gate_level("senior_review") > gate_level(calm.gate)
    assert any("INC-7" in r.message for r in burning.reasons)
    assert gate_level(spent.gate) >= gate_level("senior_review")
    assert spent.rollout_plan.template_band != calm.rollout_plan.template_band  # the next band's rollout


def test_several_services_deploy_dependencies_first_and_roll_back_in_reverse():
    decision = decide(
        context([("web/app.ts", "web"), ("db/schema.py", "db"), ("api/x.py", "api")], 0.3), POLICY
    )
    assert decision.rollout_plan.deploy_order == ["db", "api", "web"]
    assert decision.rollout_plan.rollback_order == ["web", "api", "db"]


def test_the_same_inputs_give_the_same_decision():
    one = decide(context([("api/x.py", "api")], 0.3), POLICY)
    two = decide(context([("api/x.py", "api")], 0.3), POLICY)
    assert one.model_dump() == two.model_dump()
    assert one.inputs_digest == two.inputs_digest


def test_the_test_plan_orders_known_tests_retries_flaky_ones_and_keeps_the_budget():
    from agents.test_allocation import TestHistory

    runs = []
    for i in range(30):
        sha = f"{i:040x}"
        runs.append(
            (
                f"r{i}",
                sha,
                "unit",
                "unit/test_cart.py::test_total",
                5.0,
                "failed" if i % 3 == 0 else "passed",
                1,
            )
        )
        runs.append((f"r{i}", sha, "unit", "unit/test_login.py::test_ok", 3.0, "passed", 1))
        flaky = "failed" if i % 4 == 0 else "passed"
        runs.append((f"r{i}", sha, "unit", "unit/test_clock.py::test_tick", 2.0, flaky, 1))
        if flaky == "failed":
            runs.append((f"r{i}", sha, "unit", "unit/test_clock.py::test_tick", 2.0, "passed", 2))
        runs.append((f"r{i}", sha, "integration", "integration/test_checkout", 900.0, "passed", 1))
    frame = pd.DataFrame(
        runs, columns=["run_id", "sha", "suite", "test_id", "duration_s", "outcome", "attempt"]
    )
    history = TestHistory.from_runs(frame)
    decision = decide(context([("api/cart.py", "api")], 0.005, test_history=history), POLICY)
    plan = decision.test_plan
    ids = [t.test_id for t in plan.tests]
    assert ids[0] == "unit/test_cart.py::test_total"  # fails most often: first
    tick = next(t for t in plan.tests if t.test_id.endswith("test_tick"))
    assert tick.flake_rate > POLICY.tests.flaky_blocking_below and tick.retries == POLICY.tests.flaky_retries
    assert not tick.blocking
    assert plan.planned_s <= plan.budget_s
    assert "integration/test_checkout" not in ids  # 900 s does not fit the low band's 600 s budget
    assert plan.skipped_over_budget >= 1


def test_the_published_json_schema_matches_the_decision_output():
    import json

    import jsonschema

    from agents.decision import DECISION_SCHEMA_FILE

    committed = json.loads(DECISION_SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(output_schema()))
    body = decide(context([("api/x.py", "api")], 0.3), POLICY).model_dump(mode="json")
    body["audit_head"] = "0" * 64
    jsonschema.validate(body, committed)


@given(
    probability=st.floats(min_value=0, max_value=1),
    incident=st.booleans(),
    budget=st.one_of(st.none(), st.floats(min_value=-1, max_value=1)),
    migration=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_production_trouble_and_mandatory_rules_never_loosen_a_gate(probability, incident, budget, migration):
    files = [("api/x.py", "api")] + ([("db/migrations/0001.sql", "db")] if migration else [])
    plain = decide(context(files, probability), POLICY)
    state = ServiceState(
        error_budget_left=budget,
        open_incidents=[OpenIncident(incident_id="I", severity="high", started_at=MONDAY_10)]
        if incident
        else [],
    )
    troubled = decide(context(files, probability, service_states={"api": state}), POLICY)
    assert gate_level(troubled.gate) >= gate_level(plain.gate)
    if migration:
        assert plain.gate != "fast_track"


@pytest.mark.parametrize("probability", [0.001, 0.2, 0.5, 0.9, 0.999])
def test_a_riskier_score_never_gets_a_looser_gate(probability):
    lower = decide(context([("api/x.py", "api")], probability / 2), POLICY)
    higher = decide(context([("api/x.py", "api")], probability), POLICY)
    assert gate_level(higher.gate) >= gate_level(lower.gate)


@pytest.mark.parametrize("path", ["api/history.py", "api/lang/charge.py", "api/docs/conf.py"])
def test_code_under_a_docs_like_name_or_folder_is_code_and_a_relaxation_never_lifts_a_block(path):
    decision = decide(context([(path, "api")], 0.97), POLICY)
    assert decision.gate == "block"
    assert "text-only-changes" not in decision.rules_fired


def test_a_naive_or_foreign_decision_time_is_read_as_utc():
    eight_am_pacific = datetime(2026, 11, 23, 10, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=-8)))
    ctx = context([("api/x.py", "api")], 0.3).model_copy(update={"now": eight_am_pacific})
    ctx = ChangeContext.model_validate(ctx.model_dump() | {"test_history": None})
    assert ctx.now.utcoffset().total_seconds() == 0 and ctx.now.hour == 10
    naive = ChangeContext.model_validate(ctx.model_dump() | {"now": datetime(2026, 11, 23, 10, 0)})
    assert naive.now.tzinfo is not None and naive.now.hour == 10
