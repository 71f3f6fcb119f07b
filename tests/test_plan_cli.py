"""`awo plan` and `awo run` as a user runs them: a goal becomes a plan file, the run needs an approver the
policy names when the gate is senior review, a failed canary re-plans into rollback, block and an incident
row, and the run is audited."""

from __future__ import annotations

import getpass

import pandas as pd
import yaml
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()
GOAL = "ship 3f2a9c1 of payments to production"


def test_a_goal_becomes_a_plan_file_and_an_approved_run_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    plan = tmp_path / "ship.yaml"
    made = runner.invoke(app, ["plan", GOAL, "--out", str(plan)])
    assert made.exit_code == 0, made.output
    assert "canary:payments" in made.output and plan.exists()
    tasks = [t["id"] for t in yaml.safe_load(plan.read_text())["tasks"]]
    assert tasks.index("analyse") < tasks.index("canary:payments") < tasks.index("promote:payments")
    monkeypatch.setattr(getpass, "getuser", lambda: "mallory")  # the approver is who runs the command
    refused = runner.invoke(app, ["run", str(plan), "--approve"])
    assert refused.exit_code == 2 and "mallory" in refused.output
    monkeypatch.setattr(getpass, "getuser", lambda: "release-managers")
    done = runner.invoke(app, ["run", str(plan), "--approve"])
    assert done.exit_code == 0, done.output
    assert "succeeded" in done.output
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0
    again = runner.invoke(app, ["run", str(plan), "--approve"])
    assert again.exit_code == 0 and "started" not in again.output  # resumed: nothing left to do


def test_a_failed_canary_rolls_back_blocks_and_records_an_incident(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(getpass, "getuser", lambda: "release-managers")
    plan = tmp_path / "ship.yaml"
    assert runner.invoke(app, ["plan", GOAL, "--out", str(plan)]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "run",
            str(plan),
            "--approve",
            "--fail",
            "canary:payments=error rate 4% > 1%",
        ],
    )
    assert result.exit_code == 4, result.output
    assert "rollback:payments" in result.output and "blocked" in result.output
    incidents = pd.read_csv(tmp_path / "data" / "feedback" / "incidents.csv")
    assert list(incidents["service"]) == ["payments"] and "error rate 4%" in incidents["summary"].iloc[0]


def test_a_bad_goal_names_the_word_and_a_bad_fail_option_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    bad = runner.invoke(
        app, ["plan", "ship 3f2a9c1 of payments into production", "--out", str(tmp_path / "p.yaml")]
    )
    assert bad.exit_code == 2 and "into" in bad.output
    plan = tmp_path / "ship.yaml"
    assert runner.invoke(app, ["plan", GOAL, "--out", str(plan)]).exit_code == 0
    wrong = runner.invoke(app, ["run", str(plan), "--fail", "canary:payments"])
    assert wrong.exit_code == 2 and "TASK_ID=REASON" in wrong.output


def test_audit_repair_says_there_is_nothing_to_repair_on_a_whole_log(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["audit", "repair"])
    assert result.exit_code == 0 and "nothing to repair" in result.output
