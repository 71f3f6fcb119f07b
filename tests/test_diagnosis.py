"""The diagnostic agent: culprit ranking pinned with a few literal deployments, the repair the policy
chooses, a repair run through run_plan (approval and audit as for every plan), `awo diagnose` on a small
generated world, and the demo world's incident truth."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from typer.testing import CliRunner

from agents.audit import AuditLog
from agents.diagnosis import Diagnosis, IncidentFacts, choose_repair, rank_commits, rank_culprits, repair_plan
from agents.executor import DryRunExecutor
from agents.planner import PlanError, check_plan, plan_repair
from agents.policy import RepairPolicy, load_policy
from agents.run import run_plan
from features.topology import Topology
from tests.conftest import free_port

AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TOPOLOGY = Topology.model_validate(
    {
        "services": {
            "accounts": {"criticality": "high"},
            "payments": {"depends_on": ["accounts"], "criticality": "critical"},
            "search": {},
        }
    }
)


def deployments(*rows: tuple[str, str, float, str]) -> pd.DataFrame:
    """(deploy_id, service, hours before AT (negative: after), outcome), all to production; each ships
    the sha `<deploy_id>0000`."""
    return pd.DataFrame(
        [
            {
                "deploy_id": d,
                "service": s,
                "environment": "production",
                "sha": f"{d}0000",
                "started_at": pd.Timestamp(AT - timedelta(hours=h)),
                "outcome": o,
            }
            for d, s, h, o in rows
        ]
    )


def incident(service: str = "payments") -> IncidentFacts:
    return IncidentFacts("inc-1", service, AT, "high")


def test_the_deployment_closer_in_time_ranks_higher():
    table = deployments(("d-old", "payments", 30, "succeeded"), ("d-new", "payments", 3, "succeeded"))
    diagnosis = rank_culprits(incident(), table, TOPOLOGY)
    assert [c.deploy_id for c in diagnosis.candidates] == ["d-new", "d-old"]
    assert diagnosis.culprit is not None and diagnosis.culprit.deploy_id == "d-new"
    assert diagnosis.candidates[0].relation == "same service" and diagnosis.candidates[0].hours_before == 3


def test_a_risky_deploy_of_a_dependency_beats_an_older_own_deploy():
    table = deployments(("own", "payments", 20, "succeeded"), ("dep", "accounts", 4, "succeeded"))
    scores = {"own": 0.05, "dep": 0.6}
    diagnosis = rank_culprits(incident(), table, TOPOLOGY, failure_scores=scores)
    top = diagnosis.candidates[0]
    assert top.deploy_id == "dep" and top.relation == "dependency (depth 1)" and top.failure_score == 0.6
    assert top.blast_radius == 2  # accounts and payments, which calls it
    # as far back as each other and as risky, the incident's own service goes first (the relation prior)
    same_time = deployments(("own", "payments", 4, "succeeded"), ("dep", "accounts", 4, "succeeded"))
    even = rank_culprits(incident(), same_time, TOPOLOGY, failure_scores={"own": 0.1, "dep": 0.1})
    assert [c.deploy_id for c in even.candidates] == ["own", "dep"]


def test_nothing_plausible_answers_no_culprit():
    nothing_recent = deployments(("d1", "payments", 200, "succeeded"))
    first = rank_culprits(incident(), nothing_recent, TOPOLOGY)
    assert first.culprit is None and first.candidates == [] and "72 h" in first.why
    weak = deployments(("d2", "payments", 60, "succeeded"), ("d3", "search", 1, "failed"))
    second = rank_culprits(incident(), weak, TOPOLOGY, failure_scores={"d2": 0.02})
    assert second.culprit is None
    assert [c.deploy_id for c in second.candidates] == ["d2"]  # search is not a dependency of payments
    assert "no deployment is plausible" in second.why


def test_a_deployment_after_the_incident_is_never_a_candidate():
    table = deployments(("before", "payments", 10, "succeeded"), ("after", "payments", -0.5, "failed"))
    diagnosis = rank_culprits(incident(), table, TOPOLOGY, failure_scores={"after": 0.99})
    assert [c.deploy_id for c in diagnosis.candidates] == ["before"]


def test_a_failed_outcome_and_incidents_across_the_blast_radius_raise_a_score():
    table = deployments(("a", "accounts", 5, "succeeded"), ("b", "accounts", 5.5, "rolled-back"))
    plain = rank_culprits(incident(), table, TOPOLOGY)
    assert plain.candidates[0].deploy_id == "b"
    others = pd.DataFrame([{"service": "accounts", "started_at": pd.Timestamp(AT - timedelta(hours=1))}])
    seen = rank_culprits(incident(), table, TOPOLOGY, incidents=others)
    assert seen.candidates[0].co_incidents == 1 and seen.candidates[0].score > plain.candidates[0].score


def test_commits_rank_by_model_risk_then_by_churn():
    ranked = rank_commits(["s1", "s2", "s3", "s4"], risk={"s2": 0.2, "s3": 0.7}, churn={"s1": 5, "s4": 50})
    assert [(c.sha, c.source) for c in ranked] == [
        ("s3", "model"),
        ("s2", "model"),
        ("s4", "churn"),
        ("s1", "churn"),
    ]


def _blamed(service: str) -> Diagnosis:
    table = deployments(("d8", service, 100, "succeeded"), ("d9", service, 2, "failed"))
    return rank_culprits(incident(service), table, TOPOLOGY)


def test_the_policy_chooses_the_repair_and_who_must_approve_it():
    policy = load_policy().repair
    critical = choose_repair(_blamed("payments"), policy, TOPOLOGY)
    assert critical is not None and critical.kind == "rollback" and critical.needs_approval
    assert critical.params == {
        "to": "d80000",
        "from": "d90000",
        "from_deploy": "d9",
    }  # back to what ran before
    first = rank_culprits(incident("payments"), deployments(("d9", "payments", 2, "failed")), TOPOLOGY)
    unknown = choose_repair(first, policy, TOPOLOGY)  # nothing known ran before it: no rollback to choose
    assert unknown is not None and unknown.kind != "rollback"
    high = choose_repair(_blamed("accounts"), policy, TOPOLOGY)
    assert high is not None and high.kind == "rollback" and not high.needs_approval
    nobody = rank_culprits(incident("search"), deployments(("old", "search", 500, "succeeded")), TOPOLOGY)
    restart = choose_repair(nobody, policy, TOPOLOGY)
    assert restart is not None and restart.kind == "restart" and restart.service == "search"
    flags = RepairPolicy(on_culprit=["flag_off", "rollback"], flags={"accounts": "new-login"})
    flag = choose_repair(_blamed("accounts"), flags, TOPOLOGY)
    assert flag is not None and flag.kind == "flag_off" and flag.params == {"flag": "new-login"}
    # a flag_off without a flag for the service falls through to the next allowed repair
    fallback = choose_repair(_blamed("payments"), flags, TOPOLOGY)
    assert fallback is not None and fallback.kind == "rollback"


def test_a_policy_whose_preferences_name_a_repair_it_does_not_allow_is_refused():
    with pytest.raises(ValueError, match=r"on_culprit.*not among the allowed"):
        RepairPolicy(allowed=["restart"], on_culprit=["rollback"])
    with pytest.raises(ValueError, match="a rollback needs a deployment"):
        RepairPolicy(on_no_culprit=["rollback"])


def _repair_plan(service: str):
    policy = load_policy()
    repair = choose_repair(_blamed(service), policy.repair, TOPOLOGY)
    assert repair is not None
    plan = repair_plan("inc-1", repair, policy, AT)
    return plan, repair


def test_a_repair_that_needs_approval_waits_for_a_person_as_run_plan_does(tmp_path):
    plan, repair = _repair_plan("payments")
    assert repair.needs_approval and plan.gate == "senior_review" and check_plan(plan) == []
    with pytest.raises(PlanError, match="senior_review"):
        run_plan(plan, DryRunExecutor())
    executor = DryRunExecutor(running={("production", "payments"): "d90000"})
    report = run_plan(plan, executor, approved_by="oncall")
    assert report.outcome == "succeeded"
    assert executor.actions[0] == (
        "rollback:payments",
        "roll back payments in production from d90000 to d80000",
    )
    assert executor.running[("production", "payments")] == "d80000"


def test_a_repair_run_through_run_plan_writes_the_audit_record(tmp_path):
    plan, repair = _repair_plan("accounts")
    assert not repair.needs_approval and plan.gate == "standard"
    log = AuditLog(tmp_path / "audit", "s" * 32)
    report = run_plan(plan, DryRunExecutor(), audit=log)
    assert report.outcome == "succeeded" and report.ran == ["rollback:accounts", "watch:accounts", "notify"]
    records = list(log.records())
    assert len(records) == 1 and records[0]["kind"] == "plan_run" and records[0]["plan_id"] == plan.plan_id
    assert records[0]["tasks"]["rollback:accounts"] == "succeeded" and log.verify().ok


def test_the_new_repair_kinds_run_idempotently_on_the_dry_run_executor():
    policy = load_policy()
    executor = DryRunExecutor()
    for kind, params in (("restart", {}), ("scale_out", {"replicas": 6}), ("flag_off", {"flag": "beta"})):
        plan = plan_repair("inc-2", kind, "search", "production", params, policy, needs_approval=False,
                           why="test", now=AT)  # fmt: skip
        assert check_plan(plan) == []
        assert run_plan(plan, executor).outcome == "succeeded"
    assert executor.replicas == {("production", "search"): 6}
    assert executor.flags_off == {("production", "search", "beta")}
    assert executor.restarts == {("production", "search"): 1}
    again = plan_repair("inc-3", "scale_out", "search", "production", {"replicas": 6}, policy,
                        needs_approval=False, why="test", now=AT)  # fmt: skip
    run_plan(again, executor)
    assert [a for t, a in executor.actions if t == "scale_out:search"] == [
        "scale search in production to 6 replicas"
    ]
    with pytest.raises(PlanError, match="replicas >= 1"):
        plan_repair("inc-4", "scale_out", "search", "production", {"replicas": 0}, policy,
                    needs_approval=False, why="test", now=AT)  # fmt: skip


# --- the demo world ---------------------------------------------------------------------------------


def test_the_demo_world_truth_names_deployments_of_the_service_or_a_dependency_before_the_incident(
    small_world,
):
    from features.topology import load_topology

    world = small_world.repo.parent
    topology = load_topology(small_world.topology_path)
    truth = pd.read_csv(small_world.incident_truth_path, dtype=str, keep_default_na=False)
    incidents = pd.read_csv(world / "incidents.csv").set_index("incident_id")
    deployments = pd.read_csv(world / "deployments.csv").set_index("deploy_id")
    assert sorted(truth["incident_id"]) == sorted(incidents.index)
    assert "culprit_deploy_id" not in incidents.columns
    culprits = truth[truth["culprit_deploy_id"] != ""]
    assert 0 < len(culprits) < len(truth)  # both caused and noise incidents
    dependency_caused = 0
    for row in culprits.itertuples():
        inc, dep = incidents.loc[row.incident_id], deployments.loc[row.culprit_deploy_id]
        assert dep["environment"] == "production"
        assert pd.Timestamp(dep["started_at"]) < pd.Timestamp(inc["started_at"])
        own = dep["service"] == inc["service"]
        assert own or dep["service"] in topology.service(inc["service"]).depends_on
        dependency_caused += not own
    assert dependency_caused > 0


@pytest.fixture(scope="module")
def diagnosed_world(small_world, tmp_path_factory):
    from features.settings import load_settings
    from pipelines.flow import DELIVERY_FILES
    from pipelines.ingest import ingest_file
    from pipelines.mine import mine_repository

    data = tmp_path_factory.mktemp("diagnose-data")
    settings = load_settings(data_dir=data)
    tables = settings.repo_data_dir("demo")
    mine_repository(small_world.repo, settings, tables, name="demo")
    for kind, filename in DELIVERY_FILES[:2]:  # deployments and incidents
        ingest_file(kind, small_world.repo.parent / filename, settings, tables)
    return data, tables


def _env(monkeypatch, small_world, data) -> None:
    monkeypatch.setenv("AWO_DATA_DIR", str(data))
    monkeypatch.setenv("AWO_SERVICE_MAP", str(small_world.topology_path))
    # a registry that does not answer: the diagnosis goes on without model scores, and says so
    monkeypatch.setenv("AWO_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")


def test_awo_diagnose_prints_the_ranked_culprits_and_the_repair(small_world, diagnosed_world, monkeypatch):
    from pipelines.cli import app

    data, tables = diagnosed_world
    _env(monkeypatch, small_world, data)
    truth = pd.read_csv(small_world.incident_truth_path, dtype=str, keep_default_na=False)
    incident_id = truth[truth["culprit_deploy_id"] != ""]["incident_id"].iloc[-1]
    runner = CliRunner()
    shown = runner.invoke(app, ["diagnose", incident_id, "--data", str(tables), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["incident"]["incident_id"] == incident_id and report["candidates"]
    assert [c["score"] for c in report["candidates"]] == sorted(
        (c["score"] for c in report["candidates"]), reverse=True
    )
    assert report["repair"]["kind"] in ("rollback", "flag_off", "restart", "scale_out")
    assert any("registry unavailable" in n for n in report["notes"])
    text = runner.invoke(app, ["diagnose", incident_id, "--data", str(tables)])
    assert text.exit_code == 0 and "rank  deploy_id" in text.output and "repair:" in text.output


def test_awo_diagnose_executes_an_allowed_repair_and_audits_it(small_world, diagnosed_world, monkeypatch):
    from pipelines.cli import app

    data, tables = diagnosed_world
    _env(monkeypatch, small_world, data)
    runner = CliRunner()
    incidents = pd.read_csv(small_world.repo.parent / "incidents.csv")
    incident_id = incidents[incidents["service"] == "search"]["incident_id"].iloc[-1]  # medium: no approval
    done = runner.invoke(app, ["diagnose", incident_id, "--data", str(tables), "--execute"])
    assert done.exit_code == 0, done.output
    assert "succeeded" in done.output
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    log = [json.loads(line) for line in (data / "audit" / "decisions.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in log if r.get("incident_id") == incident_id or r["kind"] == "plan_run"]
    assert kinds[-2:] == ["diagnosis", "plan_run"]


def test_awo_diagnose_names_an_unknown_incident(small_world, diagnosed_world, monkeypatch):
    from pipelines.cli import app

    data, tables = diagnosed_world
    _env(monkeypatch, small_world, data)
    result = CliRunner().invoke(app, ["diagnose", "inc-nope", "--data", str(tables)])
    assert result.exit_code == 2 and "inc-nope" in result.output
