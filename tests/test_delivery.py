"""Delivery history: schema errors reported by file, line and field; strict and lenient modes; idempotent
re-ingest; the linking rules; shipped commits; flakiness; and the demo world's delivery signal."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.errors import BadTable
from features.settings import load_settings
from pipelines.cli import app
from pipelines.ingest import ingest_file
from pipelines.mine import mine_repository
from tests.conftest import DAY, T0

DEPLOY_HEADER = "deploy_id,service,environment,sha,started_at,finished_at,strategy,outcome\n"
INCIDENT_HEADER = "incident_id,service,severity,started_at,resolved_at,deploy_id,sha,summary\n"
RUN_HEADER = "run_id,sha,suite,test_id,duration_s,outcome,attempt\n"
SHA = "a" * 40


def _iso(ts: int) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.parquet")}


@pytest.fixture
def settings(tmp_path):
    return load_settings(data_dir=tmp_path / "data")


def test_each_bad_row_is_reported_with_line_field_and_reason(tmp_path, settings):
    path = tmp_path / "deployments.csv"
    path.write_text(
        DEPLOY_HEADER
        + f"d1,pay,production,{SHA},2024-01-01T10:00:00Z,2024-01-01T10:10:00Z,canary,succeeded\n"
        + "d2,pay,production,not-a-sha,2024-01-02T10:00:00Z,,rolling,succeeded\n"
        + f"d3,pay,production,{SHA},yesterday,,rolling,succeeded\n"
        + f"d4,pay,production,{SHA},2024-01-04T10:00:00Z,2024-01-04T09:00:00Z,rolling,succeeded\n"
        + f"d5,pay,production,{SHA},2024-01-05T10:00:00Z,,big-bang,succeeded\n"
        + f"d1,pay,production,{SHA},2024-01-06T10:00:00Z,,rolling,succeeded\n"
        + f"d7,pay,production,{SHA},2024-01-07T10:00:00Z,,rolling,succeeded,extra\n"
        + f"d8,,production,{SHA},2024-01-08T10:00:00Z,,rolling,succeeded\n"
    )
    result = ingest_file("deployments", path, settings, tmp_path / "t")
    problems = {(r.line, r.field) for r in result.rejects}
    assert problems == {(3, "sha"), (4, "started_at"), (5, "row"), (6, "strategy"), (7, "deploy_id"),
                        (8, "row"), (9, "service")}  # fmt: skip
    reasons = {r.line: r.reason for r in result.rejects}
    assert "not a commit sha" in reasons[3] and "not an ISO 8601 time" in reasons[4]
    assert "finished_at is before started_at" in reasons[5] and "duplicate of line 2" in reasons[7]
    assert result.accepted == 1 and result.stored == 1
    rejects = pd.read_csv(result.rejects_path)
    assert list(rejects["line"]) == sorted(rejects["line"]) and set(rejects["file"]) == {str(path)}


def test_strict_mode_rejects_the_whole_file_and_writes_nothing(tmp_path, settings):
    good = tmp_path / "good.csv"
    good.write_text(DEPLOY_HEADER + f"d1,pay,production,{SHA},2024-01-01T10:00:00Z,,rolling,succeeded\n")
    ingest_file("deployments", good, settings, tmp_path / "t")
    before = _digests(tmp_path / "t")
    bad = tmp_path / "bad.csv"
    bad.write_text(
        DEPLOY_HEADER
        + f"d2,pay,production,{SHA},2024-01-02T10:00:00Z,,rolling,succeeded\n"
        + f"d3,pay,production,{SHA},2024-01-03T10:00:00Z,,rolling,exploded\n"
    )
    with pytest.raises(BadTable, match=r"bad.csv: 1 bad rows.*line 3, field outcome"):
        ingest_file("deployments", bad, settings, tmp_path / "t", strict=True)
    assert _digests(tmp_path / "t") == before
    cli = CliRunner().invoke(
        app, ["ingest", "deployments", str(bad), "--data", str(tmp_path / "t"), "--strict"]
    )
    assert cli.exit_code == 2 and "file rejected" in cli.output


def test_header_problems_reject_the_file(tmp_path, settings):
    path = tmp_path / "incidents.csv"
    path.write_text("incident_id,service,severity,started_at,colour\nx,pay,high,2024-01-01T00:00:00Z,red\n")
    with pytest.raises(BadTable, match=r"incidents.csv, line 1 \(header\).*unknown columns \['colour'\]"):
        ingest_file("incidents", path, settings, tmp_path / "t")


def test_reingesting_the_same_file_changes_nothing_and_a_changed_row_replaces_its_key(tmp_path, settings):
    path = tmp_path / "runs.jsonl"
    run = {"run_id": "r1", "sha": SHA, "test_id": "t_a"}
    rows = [
        {**run, "suite": "unit", "duration_s": 1.5, "outcome": "failed"},
        {**run, "suite": "unit", "duration_s": 1.2, "outcome": "passed", "attempt": 2},
        {**run, "suite": "e2e", "duration_s": 9.0, "outcome": "passed"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    first = ingest_file("test-runs", path, settings, tmp_path / "t")
    once = _digests(tmp_path / "t")
    second = ingest_file("test-runs", path, settings, tmp_path / "t")
    assert first.stored == second.stored == 3 and _digests(tmp_path / "t") == once
    rows[2]["outcome"] = "failed"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    third = ingest_file("test-runs", path, settings, tmp_path / "t")
    assert third.stored == 3 and [(r.line, r.field) for r in third.rejects] == [(4, "row")]
    runs = pd.read_parquet(tmp_path / "t" / "raw_test_runs.parquet")
    assert runs.loc[runs["suite"] == "e2e", "outcome"].item() == "failed"


def test_incidents_link_by_name_else_to_the_latest_deployment_of_the_service_in_the_window(
    tmp_path, settings
):
    deployments = tmp_path / "d.csv"
    deployments.write_text(
        DEPLOY_HEADER
        + f"d1,pay,production,{SHA},{_iso(T0)},,rolling,succeeded\n"
        + f"d2,pay,production,{SHA},{_iso(T0 + DAY)},,rolling,succeeded\n"
        + f"d3,shop,production,{SHA},{_iso(T0 + DAY + 3600)},,rolling,succeeded\n"
        + f"d4,pay,production,{SHA},{_iso(T0 + 10 * DAY)},,canary,rolled-back\n"
    )
    incidents = tmp_path / "i.csv"
    incidents.write_text(
        INCIDENT_HEADER
        + f"i1,pay,critical,{_iso(T0 + DAY + 7200)},,d1,,named deployment wins\n"
        + f"i2,pay,high,{_iso(T0 + DAY + 7200)},,,,latest pay deployment before it: d2\n"
        + f"i3,pay,SEV1,{_iso(T0 + 5 * DAY)},,,,no pay deployment in the 48 h before\n"
        + f"i4,shop,low,{_iso(T0 + DAY + 7200)},,,,minor: links but does not fail d3\n"
    )
    out = tmp_path / "t"
    ingest_file("deployments", deployments, settings, out)
    result = ingest_file("incidents", incidents, settings, out)
    linked = pd.read_parquet(out / "incidents.parquet").set_index("incident_id")
    assert linked["linked_deploy_id"].to_dict() == {"i1": "d1", "i2": "d2", "i3": None, "i4": "d3"}
    assert linked.loc["i3", "severity"] == "critical" and linked.loc["i3", "link_rule"].startswith(
        "no deployment"
    )
    failed = pd.read_parquet(out / "deployments.parquet").set_index("deploy_id")
    # d1: a critical incident names it 26 h later (inside the 48 h window); d2: a high incident;
    # d3: only a low one; d4: rolled back.
    assert failed["failed"].to_dict() == {"d1": True, "d2": True, "d3": False, "d4": True}
    assert failed.loc["d4", "failure_reason"] == "outcome rolled-back"
    assert failed.loc["d2", "failure_reason"] == "incident i2"
    assert result.linked_incidents == 3 and result.failed_deployments == 3


def test_a_deployment_ships_the_commits_since_the_previous_one_that_touch_its_service(
    tiny_repo, tmp_path, settings
):
    shas = []
    for i, path in enumerate(["pay/a.py", "shop/b.py", "pay/c.py", "shop/d.py", "pay/e.py"]):
        tiny_repo.lines(path, 3 + i, f"v{i}")
        shas.append(tiny_repo.commit(f"Change {path}", at=T0 + i * DAY))
    out = tmp_path / "t"
    mine_repository(tiny_repo.path, settings, out)
    deployments = tmp_path / "d.csv"
    deployments.write_text(
        DEPLOY_HEADER
        + f"d1,pay,production,{shas[1][:10]},{_iso(T0 + DAY + 60)},,rolling,succeeded\n"
        + f"d2,pay,production,{shas[4]},{_iso(T0 + 4 * DAY + 60)},,rolling,succeeded\n"
        + f"d3,pay,staging,{shas[4]},{_iso(T0 + 4 * DAY + 30)},,rolling,succeeded\n"
        + f"d4,pay,production,{'b' * 40},{_iso(T0 + 5 * DAY)},,rolling,succeeded\n"
    )
    result = ingest_file("deployments", deployments, settings, out)
    table = pd.read_parquet(out / "deployments.parquet").set_index("deploy_id")
    assert list(table.loc["d1", "shipped"]) == [shas[0]] and table.loc["d1", "first_deploy"]
    assert (
        sorted(table.loc["d2", "shipped"]) == sorted([shas[2], shas[4]])
        and not table.loc["d2", "first_deploy"]
    )
    assert sorted(table.loc["d3", "shipped"]) == sorted([shas[0], shas[2], shas[4]])  # first to staging
    assert not table.loc["d4", "sha_known"] and table.loc["d4", "n_shipped"] == 0
    assert any("not in the mined history" in w for w in result.warnings)


def test_flake_rate_counts_commits_where_a_test_both_failed_and_passed(tmp_path, settings):
    rows = []
    for i in range(10):
        sha = f"{i:07d}" + "c" * 33
        rows.append(f"r{i},{sha},unit,test_flaky,0.5,{'failed' if i < 3 else 'passed'},1")
        if i < 3:
            rows.append(f"r{i},{sha},unit,test_flaky,0.5,passed,2")
        rows.append(f"r{i},{sha},unit,test_broken,0.2,failed,1")
        rows.append(f"r{i},{sha},unit,test_skipped,0.0,skipped,1")
        rows.append(f"r{i},{sha},unit,test_reported,0.1,{'flaky' if i == 0 else 'passed'},1")
    path = tmp_path / "runs.csv"
    path.write_text(RUN_HEADER + "\n".join(rows) + "\n")
    ingest_file("test-runs", path, settings, tmp_path / "t")
    tests = pd.read_parquet(tmp_path / "t" / "tests.parquet").set_index("test_id")
    assert tests.loc["test_flaky", "flake_rate"] == pytest.approx(0.3)
    assert tests.loc["test_broken", "flake_rate"] == 0 and tests.loc["test_broken", "fail_rate"] == 1
    assert tests.loc["test_reported", "flake_rate"] == pytest.approx(0.1)
    assert "test_skipped" not in tests.index


def test_demo_world_deployments_that_ship_defects_fail_more_often(small_world, tmp_path, settings):
    out = tmp_path / "t"
    mine_repository(small_world.repo, settings, out)
    for kind, name in (("deployments", "deployments.csv"), ("incidents", "incidents.csv"),
                       ("test-runs", "test-runs.csv")):  # fmt: skip
        result = ingest_file(kind, small_world.repo.parent / name, settings, out)
        assert not result.rejects, result.rejects[:3]
    deployments = pd.read_parquet(out / "deployments.parquet")
    truth = pd.read_parquet(small_world.truth_path)
    inducing = set(truth.loc[truth["bug_inducing"], "sha"])
    prod = deployments[deployments["environment"] == "production"].copy()
    prod["ships_defect"] = prod["shipped"].map(lambda s: bool(inducing & set(s)))
    rates = prod.groupby("ships_defect")["failed"].mean()
    assert rates[True] > 2 * rates[False]
    tests = pd.read_parquet(out / "tests.parquet")
    flaky = set(tests.loc[tests["flake_rate"] > 0.05, "test_id"])
    assert flaky <= {"test_checkout_timeout", "test_ranking_ties", "test_websocket_reconnect"} and flaky


def test_a_bug_in_validation_fails_loudly_instead_of_becoming_a_rejected_row(tmp_path, settings, monkeypatch):
    from pydantic import model_validator

    import features.delivery

    class BuggyDeployment(features.delivery.DeploymentRow):
        @model_validator(mode="after")
        def _bug(self):
            raise KeyError("a bug, not bad data")

    monkeypatch.setitem(features.delivery.KINDS, "deployments", (BuggyDeployment, ("deploy_id",)))
    path = tmp_path / "deployments.csv"
    path.write_text(DEPLOY_HEADER + f"d1,pay,production,{SHA},2024-01-01T10:00:00Z,,rolling,succeeded\n")
    with pytest.raises(KeyError, match="a bug"):
        ingest_file("deployments", path, settings, tmp_path / "t")
    assert not (tmp_path / "t" / "rejects").exists()
