"""Goals, plans and runs: the goal grammar word by word, the planner's task graphs, the checks an
LLM-proposed plan must pass, the re-plan after a failed canary, and resuming a run cut off midway."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.decision import Decision
from agents.executor import DryRunExecutor, TaskResult
from agents.goals import GoalError, parse_goal
from agents.planner import (
    Plan,
    PlanError,
    Task,
    check_plan,
    complete_plan,
    execution_order,
    load_plan,
    plan_goal,
    replan_on_failure,
    save_plan,
)
from agents.policy import Analysis, Step, load_policy
from agents.rollout import RolloutPlan
from agents.run import run_plan
from agents.test_plan import PlannedSuite
from agents.test_plan import TestPlan as PlannedTests
from features.delivery import IncidentRow
from features.settings import load_settings
from features.topology import Topology
from pipelines.ingest import ingest_file

POLICY = load_policy()
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SHA = "3f2a9c1" + "0" * 33
CANARY_STEPS = [
    Step(set_weight=10),
    Step(pause="10m"),
    Step(set_weight=50),
    Step(pause="10m"),
    Step(set_weight=100),
]
ERROR_RATE = Analysis(name="error-rate", metric="error_rate", count=10, success_condition="result <= 0.01")


def decision(
    services: list[str] = ["payments"],  # noqa: B006  (read only)
    strategy: str = "canary",
    gate: str = "standard",
    deploy_at: datetime | None = MONDAY_10 + timedelta(hours=1),
    band: str = "medium",
) -> Decision:
    """A decision built from the models directly (as `decide` would return), deploy order as given."""
    return Decision(
        decision_id="01JDQ0000000000000000000AA",
        repo="shop",
        shas=[SHA],
        services=services,
        environment="production",
        gate=gate,
        band=band,
        probability=0.3,
        reasons=[],
        rules_fired=[],
        test_plan=PlannedTests(
            suites=[
                PlannedSuite(
                    name="unit", resource="unit-runner", mandatory=False, why=["changed files: code"]
                ),
                PlannedSuite(name="integration", resource="integration-env", mandatory=True, why=["rule"]),
            ],
            tests=[],
            budget_s=1800,
            planned_s=720,
            skipped_over_budget=0,
            history_tests=0,
        ),
        rollout_plan=RolloutPlan(
            strategy=strategy,
            template_band=band,
            steps=CANARY_STEPS if strategy == "canary" else [],
            analysis=[ERROR_RATE],
            bake_time_s=1800,
            deploy_order=services,
            rollback_order=list(reversed(services)),
            deploy_at=deploy_at,
        ),
        policy_version=POLICY.version,
        decided_at=MONDAY_10,
        inputs_digest="0" * 64,
    )


def ship(services: str = "payments", **kwargs) -> Plan:
    names = [s.strip() for s in services.split(",")]
    return plan_goal(f"ship 3f2a9c1 of {services} to production", decision(names, **kwargs), POLICY)


# --- goals ---------------------------------------------------------------------------------------------


def test_a_ship_goal_with_every_option_parses_into_its_fields():
    goal = parse_goal(
        "Ship v1.4.2 of payments, checkout and web to production within 90m "
        "no-later-than 2026-11-24T16:00 strategy blue-green without canary"
    )
    assert goal.action == "ship" and goal.ref == "v1.4.2" and goal.ref_kind == "release"
    assert goal.services == ["payments", "checkout", "web"] and goal.environment == "production"
    assert goal.within_s == 5400 and goal.no_later_than == datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
    assert goal.strategy == "blue-green" and goal.canary is False
    assert goal.deadline(MONDAY_10) == MONDAY_10 + timedelta(minutes=90)


def test_a_sha_is_recognised_and_lower_cased():
    goal = parse_goal("ship 3F2A9C1 of payments to production")
    assert goal.ref == "3f2a9c1" and goal.ref_kind == "sha"


def test_promote_and_roll_back_goals_parse():
    promote = parse_goal("promote v1.4.2 of payments from staging to production")
    assert (promote.action, promote.source_environment, promote.environment) == (
        "promote",
        "staging",
        "production",
    )
    back = parse_goal("roll back payments in production to v1.4.1")
    assert (back.action, back.services, back.ref) == ("rollback", ["payments"], "v1.4.1")
    assert parse_goal("rollback payments in production").ref is None
    assert parse_goal(back.describe()) == back.model_copy(update={"text": back.describe()})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "ship 3f2a9c1 of payments too production",
            "unexpected word 'too' at column 26 (word 5); expected 'to'",
        ),
        (
            "deploy 3f2a9c1 of payments to production",
            "word 'deploy' at column 1 (word 1); expected one of 'ship'",
        ),
        ("ship 3f2a9c1 of payments to", "goal ended after 'to' (word 5); expected an environment name"),
        ("ship of payments to production", "word 'of' at column 6 (word 2); expected a commit sha"),
        (
            "ship 3f2a9c1 of Payments to production",
            "word 'Payments' at column 17 (word 4); expected a service",
        ),
        (
            "ship 3f2a9c1 of payments to production within 2h within 3h",
            "option 'within' at column 50 (word 9)",
        ),
        (
            "ship 3f2a9c1 of payments to production within soon",
            "word 'soon' at column 47 (word 8); expected a duration",
        ),
        ("ship 3f2a9c1 of payments to production no-later-than friday", "expected an ISO 8601 time"),
        (
            "ship 3f2a9c1 of payments to production strategy yolo",
            "expected one of 'full', 'rolling', 'canary'",
        ),
        (
            "ship 3f2a9c1 of payments to production please",
            "word 'please' at column 40 (word 7); expected one of 'within'",
        ),
        ("roll back payments in production now", "expected the end of the goal"),
        ("promote v1 of payments from production to production", "not 'production' to itself"),
        ("ship 3f2a9c1 of payments, payments to production", "service 'payments' is named twice"),
        ("ship 3f2a9c1 of payments to production within 0m", "longer than zero"),
        ("", "goal ended; expected one of 'ship', 'promote', 'roll', 'rollback'"),
        ("ship " + "a" * 600, "at most 500"),
    ],
)
def test_a_goal_off_the_grammar_names_the_word_its_position_and_what_was_expected(text, message):
    with pytest.raises(GoalError) as raised:
        parse_goal(text)
    assert message in str(raised.value)


def test_goal_text_never_becomes_a_shell_word_or_a_path():
    for text in ("ship $(rm -rf /) of payments to production", "ship 3f2a9c1 of ../etc to production",
                 "ship 3f2a9c1 of payments to prod;reboot"):  # fmt: skip
        with pytest.raises(GoalError, match="unexpected word"):
            parse_goal(text)


# --- plan shapes ---------------------------------------------------------------------------------------


def test_a_canary_ship_plans_analyse_test_staging_canary_promote_watch_with_the_decisions_parameters():
    plan = ship()
    assert [t.id for t in plan.tasks] == [
        "analyse", "test", "deploy:payments", "canary:payments", "promote:payments", "watch:payments"
    ]  # fmt: skip
    tasks = {t.id: t for t in plan.tasks}
    assert (
        tasks["deploy:payments"].environment == "staging"
        and tasks["canary:payments"].environment == "production"
    )
    assert [s["name"] for s in tasks["test"].params["suites"]] == ["unit", "integration"]
    assert tasks["canary:payments"].params["steps"][0] == {"set_weight": 10}
    assert tasks["canary:payments"].params["analysis"][0]["success_condition"] == "result <= 0.01"
    assert tasks["canary:payments"].params["not_before"] == "2026-11-23T11:00:00+00:00"
    assert tasks["watch:payments"].params["duration_s"] == 1800
    assert plan.decision_id == "01JDQ0000000000000000000AA" and plan.gate == "standard"
    assert execution_order(plan) == [t.id for t in plan.tasks] and check_plan(plan) == []
    assert plan.estimated_s == 720 + 1200 + 1800  # tests, the canary's two 10m pauses, bake time


def test_a_rolling_rollout_skips_the_canary_and_promotes_after_staging():
    plan = ship(strategy="rolling", band="low")
    assert [t.id for t in plan.tasks] == [
        "analyse",
        "test",
        "deploy:payments",
        "promote:payments",
        "watch:payments",
    ]
    assert plan.task("promote:payments").depends_on == ["deploy:payments"]
    assert plan.canary_required is False and check_plan(plan) == []


def test_several_services_chain_in_deploy_order_each_after_the_previous_promote():
    plan = ship("db, api, web")
    assert plan.task("canary:api").depends_on == ["deploy:api", "promote:db"]
    assert plan.task("canary:web").depends_on == ["deploy:web", "promote:api"]
    assert plan.task("deploy:api").depends_on == ["test", "deploy:db"]
    assert plan.rollback_order == ["web", "api", "db"]


def test_a_block_gate_plans_no_deploy_at_all():
    plan = ship(gate="block", band="critical")
    assert [(t.id, t.kind) for t in plan.tasks] == [
        ("analyse", "analyse"),
        ("block", "block"),
        ("notify", "notify"),
    ]
    assert check_plan(plan) == []


def test_a_goal_cannot_skip_a_canary_the_policy_requires_but_may_ask_for_one():
    refused = plan_goal("ship 3f2a9c1 of payments to production without canary", decision(), POLICY)
    assert "canary:payments" in [t.id for t in refused.tasks]
    assert any("'without canary' refused" in n for n in refused.notes)
    looser = plan_goal("ship 3f2a9c1 of payments to production strategy rolling", decision(), POLICY)
    assert looser.strategy == "canary" and any("'strategy rolling' refused" in n for n in looser.notes)
    asked = plan_goal(
        "ship 3f2a9c1 of payments to production strategy canary", decision(strategy="rolling"), POLICY
    )
    assert asked.task("canary:payments").params["steps"] == [
        s.model_dump(exclude_none=True) for s in POLICY.rollout["medium"].steps
    ]


def test_without_a_decision_the_policys_on_error_gate_and_its_template_apply():
    plan = plan_goal("ship 3f2a9c1 of payments to production", None, POLICY, now=MONDAY_10)
    assert plan.gate == POLICY.on_error and plan.task("analyse").params["requires_review"] is True
    assert "canary:payments" in [t.id for t in plan.tasks] and plan.created_at == MONDAY_10


def test_a_deadline_before_the_policys_slot_is_reported():
    plan = plan_goal("ship 3f2a9c1 of payments to production within 30m", decision(), POLICY)
    assert any("cannot be met" in n for n in plan.notes)


def test_a_decision_about_another_commit_is_refused():
    with pytest.raises(PlanError, match="not 1234567"):
        plan_goal("ship 1234567 of payments to production", decision(), POLICY)


def test_promote_skips_the_staging_deploy_and_roll_back_goes_dependants_first():
    promote = plan_goal("promote v1.4.2 of payments from staging to production", decision(), POLICY)
    assert [t.id for t in promote.tasks] == [
        "analyse",
        "test",
        "canary:payments",
        "promote:payments",
        "watch:payments",
    ]
    assert promote.task("test").environment == "staging"
    back = plan_goal("roll back db, api in production", decision(["db", "api"]), POLICY)
    assert [t.id for t in back.tasks] == ["rollback:api", "watch:api", "rollback:db", "watch:db"]
    assert back.task("rollback:db").depends_on == ["rollback:api"] and check_plan(back) == []


# --- checking and completing a proposed plan -----------------------------------------------------------


def proposal(*tasks: dict) -> dict:
    return {"tasks": list(tasks)}


PAY = {"service": "payments", "environment": "production"}
LLM_SKIPPING_TESTS = proposal(
    {"id": "analyse", "kind": "analyse", "environment": "production"},
    {
        "id": "stage",
        "kind": "deploy",
        "service": "payments",
        "environment": "staging",
        "depends_on": ["analyse"],
    },
    {
        "id": "canary",
        "kind": "canary",
        **PAY,
        "depends_on": ["stage"],
        "params": {"steps": [{"set_weight": 100}]},
    },
    {"id": "go", "kind": "promote", **PAY, "depends_on": ["canary"]},
    {"id": "look", "kind": "watch", **PAY, "depends_on": ["go"]},
    {"id": "yolo", "kind": "deploy_everything", "service": "payments"},
    {
        "id": "tell",
        "kind": "notify",
        "params": {"message": "shipped", "command": "curl x"},
        "depends_on": ["look"],
    },
)


def test_a_proposal_that_skips_the_tests_gets_them_back_and_keeps_the_planners_parameters():
    plan = complete_plan(LLM_SKIPPING_TESTS, "ship 3f2a9c1 of payments to production", decision(), POLICY)
    ids = [t.id for t in plan.tasks]
    assert "test" in ids and any(n.startswith("added 'test'") for n in plan.notes)
    assert plan.task("canary:payments").params["steps"][0] == {"set_weight": 10}  # not the proposal's 100%
    assert plan.task("tell").params == {"message": "shipped"} and plan.task("tell").depends_on == [
        "watch:payments"
    ]
    assert any("'command' dropped" in n for n in plan.notes)
    assert check_plan(plan) == []


def test_a_proposed_task_outside_the_vocabulary_is_rejected_with_the_reason():
    plan = complete_plan(LLM_SKIPPING_TESTS, "ship 3f2a9c1 of payments to production", decision(), POLICY)
    assert any("rejected proposed task 6 ('yolo'): unknown kind 'deploy_everything'" in n for n in plan.notes)
    assert all(t.kind != "deploy_everything" for t in plan.tasks)


def test_a_dependency_cycle_is_named():
    plan = ship()
    cyclic = plan.model_copy(deep=True)
    cyclic.task("analyse").depends_on.append("watch:payments")
    errors = check_plan(cyclic)
    assert len(errors) == 1 and errors[0].startswith("dependency cycle: ")
    assert {"analyse", "test", "deploy:payments", "watch:payments"} <= set(errors[0][18:].split(" -> "))
    with pytest.raises(PlanError, match="dependency cycle"):
        execution_order(cyclic)
    looped = proposal(
        {"id": "a", "kind": "notify", "depends_on": ["b"]},
        {"id": "b", "kind": "notify", "depends_on": ["a"]},
    )
    completed = complete_plan(looped, "ship 3f2a9c1 of payments to production", decision(), POLICY)
    assert any(
        "the proposal's dependencies form a cycle a -> b -> a" in n or "cycle b -> a -> b" in n
        for n in completed.notes
    )
    assert check_plan(completed) == []


def test_check_plan_names_a_production_deploy_without_tests_and_a_promote_without_its_canary():
    plan = ship()
    plan.tasks = [t for t in plan.tasks if t.id not in ("test", "canary:payments")]
    plan.task("deploy:payments").depends_on = ["analyse"]
    plan.task("promote:payments").depends_on = ["deploy:payments"]
    errors = check_plan(plan)
    assert "task 'promote:payments' deploys to production without test before it" in errors
    assert any("promotes without a canary of payments in production" in e for e in errors)


def test_a_proposal_cannot_deploy_when_the_gate_blocks_nor_touch_other_services():
    blocked = decision(gate="block", band="critical")
    plan = complete_plan(
        proposal(
            {"id": "go", "kind": "promote", "service": "payments", "environment": "production"},
            {"id": "x", "kind": "watch", "service": "billing", "environment": "production"},
        ),
        "ship 3f2a9c1 of payments to production",
        blocked,
        POLICY,
    )
    assert [t.kind for t in plan.tasks] == ["analyse", "block", "notify"]
    assert any("the gate is block" in n for n in plan.notes)
    assert any("service 'billing' is not one the goal names" in n for n in plan.notes)


@settings(max_examples=40, deadline=None)
@given(keep=st.lists(st.booleans(), min_size=10, max_size=10), flip=st.integers(0, 9))
def test_any_subset_of_the_planners_tasks_completes_to_a_legal_plan_with_all_of_them(keep, flip):
    reference = ship("db, api")
    kept = [t for t, k in zip(reference.tasks, keep, strict=True) if k]
    proposed = [t.model_dump(exclude={"status"}) for t in kept]
    if proposed:  # the proposal also claims a finished task and points somewhere that does not exist
        proposed[flip % len(proposed)].update(status="succeeded", depends_on=["nowhere"])
    plan = complete_plan({"tasks": proposed}, reference.goal, decision(["db", "api"]), POLICY)
    assert [t.id for t in plan.tasks] == [t.id for t in reference.tasks]
    assert all(t.status == "pending" for t in plan.tasks) and check_plan(plan) == []


# --- deploy order as a property ------------------------------------------------------------------------

NAMES = ["db", "auth", "api", "cart", "pay", "web", "mail"]


@st.composite
def topologies(draw) -> Topology:
    """Services with acyclic dependencies: each may depend on services drawn before it."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    services = {}
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        services[name] = {"paths": [f"{name}/*"], "depends_on": deps}
    return Topology.model_validate({"services": services})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topology=topologies(), strategy=st.sampled_from(["canary", "rolling", "blue-green"]))
def test_every_deploy_comes_after_the_deploys_of_its_dependencies(topology, strategy):
    services = sorted(topology.services)
    order = topology.deploy_order(services)
    goal = f"ship 3f2a9c1 of {', '.join(services)} to production"
    plan = plan_goal(goal, decision(order, strategy=strategy), POLICY)
    assert check_plan(plan) == []
    executor = DryRunExecutor()
    report = run_plan(plan, executor)
    assert report.outcome == "succeeded"
    when = {task_id: i for i, task_id in enumerate(executor.calls)}
    for service in services:
        for dep in topology.services[service].depends_on:
            for kind in ("deploy", "promote"):
                assert when[f"{kind}:{dep}"] < when[f"{kind}:{service}"]
            first_prod = f"canary:{service}" if strategy != "rolling" else f"promote:{service}"
            assert when[f"promote:{dep}"] < when[first_prod]


# --- running -------------------------------------------------------------------------------------------


class Audit:
    """Collects records as agents.audit.AuditLog.append would receive them."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def append(self, record: dict) -> None:
        assert record["kind"] and record["decision_id"]
        self.records.append(record)


def clock():
    ticks = iter(range(10_000))
    return lambda: MONDAY_10 + timedelta(minutes=next(ticks))


def test_an_all_green_run_succeeds_every_task_and_audits_once(tmp_path):
    audit, executor = Audit(), DryRunExecutor()
    report = run_plan(
        ship("db, api"), executor, audit=audit, state_path=tmp_path / "plan.yaml", clock=clock()
    )
    assert report.outcome == "succeeded" and report.exit_code == 0
    assert {t.status for t in report.plan.tasks} == {"succeeded"} and len(report.ran) == 10
    assert ("promote:api", "promote api 3f2a9c1 in production to 100%") in executor.actions
    assert executor.running[("production", "api")] == "3f2a9c1"
    assert [r["kind"] for r in audit.records] == ["plan_run"] and audit.records[0]["outcome"] == "succeeded"
    again = run_plan(report.plan, DryRunExecutor(), audit=audit, state_path=tmp_path / "plan.yaml")
    assert again.ran == [] and len(audit.records) == 1


def test_a_failed_canary_rolls_back_blocks_and_writes_an_incident_that_ingestion_accepts(tmp_path):
    before = {("production", "db"): "v1.3.0", ("production", "api"): "v1.3.0"}
    executor = DryRunExecutor(fail={"canary:api": "error rate 4% > 1%"}, running=before)
    incidents = tmp_path / "data" / "feedback" / "incidents.csv"
    events = []
    report = run_plan(
        ship("db, api"), executor, feedback_root=tmp_path / "data", clock=clock(), on_event=events.append
    )
    assert report.outcome == "blocked" and report.exit_code == 4
    assert "promote:api" not in executor.calls and report.plan.task("promote:api").status == "cancelled"
    assert executor.calls[-5:] == ["rollback:api", "rollback:db", "block", "record_incident:api", "notify"]
    assert ("rollback:api", "abort the api canary 3f2a9c1 in production") in executor.actions
    assert (
        executor.blocked == {"3f2a9c1"}
        and {k: v for k, v in executor.running.items() if k[0] == "production"} == before
    )
    assert any(e.kind == "replanned" for e in events)
    summary = report.summary_lines()
    assert summary[0] == f"plan {report.plan.plan_id}: ship 3f2a9c1 of db, api to production: blocked"
    assert summary[2].startswith(
        "  canary:api failed: error rate 4% > 1%; re-planned: +rollback:api, rollback:db"
    )
    rows = list(csv.DictReader(incidents.open()))
    assert len(rows) == 1 and rows[0]["service"] == "api" and rows[0]["sha"] == "3f2a9c1"
    assert (
        "error rate 4% > 1%" in rows[0]["summary"] and IncidentRow.model_validate(rows[0]).severity == "high"
    )
    result = ingest_file(
        "incidents", incidents, load_settings(data_dir=tmp_path / "data"), tmp_path / "t", strict=True
    )
    assert result.accepted == 1


def test_a_failed_test_blocks_and_notifies_without_deploying():
    executor = DryRunExecutor(fail={"test": "integration: 3 failures"})
    report = run_plan(ship(), executor)
    assert report.outcome == "blocked"
    assert executor.calls == ["analyse", "test", "block", "notify"]
    assert not any(
        k in ("deploy", "canary", "promote")
        for k in (t.kind for t in report.plan.tasks if t.status == "succeeded")
    )


def test_a_run_cut_off_midway_resumes_without_redoing_finished_tasks(tmp_path):
    class CrashAt(DryRunExecutor):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def run(self, task: Task) -> TaskResult:
            if len(self.calls) == self.k:
                raise KeyboardInterrupt
            return super().run(task)

    state = tmp_path / "plan.yaml"
    plan = ship("db, api")
    save_plan(plan, state)
    with pytest.raises(KeyboardInterrupt):
        run_plan(load_plan(state), CrashAt(4), state_path=state)
    saved = load_plan(state)
    assert [t.status for t in saved.tasks[:5]] == ["succeeded"] * 4 + ["running"]
    second = DryRunExecutor()
    events = []
    report = run_plan(load_plan(state), second, state_path=state, on_event=events.append)
    assert second.calls == [t.id for t in plan.tasks[4:]]  # the cut-off task again, then the rest
    assert report.resumed_after == 4 and report.outcome == "succeeded"
    assert events[0].message.startswith(f"resuming plan {plan.plan_id}: 4 of 10")


def test_a_succeeded_task_run_again_changes_nothing():
    executor = DryRunExecutor()
    task = ship().task("deploy:payments")
    first, again = executor.run(task), executor.run(task)
    assert first.actions and again == TaskResult(task_id=task.id, status="succeeded", detail="already done")
    fresh = DryRunExecutor(running={("staging", "payments"): "3f2a9c1"})
    assert fresh.run(task).actions == []  # reconciles: the version already runs


def test_replanning_twice_gives_fresh_ids():
    plan = ship()
    once = replan_on_failure(plan, "canary:payments", "error rate")
    twice = replan_on_failure(once, "rollback:payments", "api server unreachable")
    assert [r.added for r in twice.replans] == [
        ["rollback:payments", "block", "record_incident:payments", "notify"],
        ["record_incident:payments#2", "notify#2"],
    ]
    assert twice.task("record_incident:payments#2").params["severity"] == "critical"


# --- the plan file -------------------------------------------------------------------------------------


def test_a_plan_file_round_trips_and_a_bad_one_names_the_file_and_field(tmp_path):
    path = tmp_path / "plans" / "ship.yaml"
    plan = ship("db, api")
    save_plan(plan, path)
    assert load_plan(path) == plan and list(path.parent.iterdir()) == [path]
    doc = yaml.safe_load(path.read_text())
    doc["tasks"][2]["kind"] = "nuke"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(PlanError, match=r"ship.yaml: tasks\.2\.kind: Input should be 'analyse'"):
        load_plan(path)
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "missing.yaml")


def test_a_state_file_of_another_plan_is_not_resumed(tmp_path):
    state = tmp_path / "state.yaml"
    save_plan(ship("db"), state)
    with pytest.raises(PlanError, match="belongs to plan"):
        run_plan(ship("api"), DryRunExecutor(), state_path=state)


def test_plans_are_deterministic():
    assert ship("db, api") == ship("db, api")


def test_a_senior_review_plan_deploys_only_once_a_person_approves_but_a_rollback_never_waits():
    plan = ship(gate="senior_review", band="high")
    with pytest.raises(PlanError, match="senior_review: a person approves it"):
        run_plan(plan, DryRunExecutor())
    audit = Audit()
    assert run_plan(plan, DryRunExecutor(), approved_by="oncall", audit=audit).outcome == "succeeded"
    assert audit.records[0]["approved_by"] == "oncall"
    back = plan_goal("roll back payments in production", None, POLICY, now=MONDAY_10)
    assert back.gate == "senior_review" and run_plan(back, DryRunExecutor()).outcome == "succeeded"
