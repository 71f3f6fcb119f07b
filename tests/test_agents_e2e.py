"""The decision engine end to end on a real mined, labelled and trained world: `awo decide` on a mined
commit and on an unmined range, its exit codes and JSON, the audit log it writes, overrides, explanations,
the fail-closed path when the registry is away, the risk API as the scorer over HTTP, and the agents
service with its tokens."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.settings import ApiToken, load_settings
from models.risk_model import ModelConfig
from pipelines.cli import app
from serving.auth import digest
from tests.conftest import free_port

FAST = ModelConfig(n_estimators=120, learning_rate=0.08)
runner = CliRunner()
DECIDER, APPROVER = "awo_decider_token_0123456789", "awo_approver_token_0123456789"


@pytest.fixture(scope="module")
def world(small_world, tmp_path_factory):
    from pipelines.flow import prepare
    from pipelines.train import train

    root = tmp_path_factory.mktemp("agents")
    repo = root / "demo"
    shutil.copytree(small_world.repo, repo)
    settings = load_settings(data_dir=root / "data", min_positive_labels=10)
    tables = settings.repo_data_dir("demo")
    prepare(repo, settings, tables, name="demo", delivery=small_world.repo.parent)
    train("change-risk", settings, tables, FAST)
    return settings, repo, tables


@pytest.fixture
def env(world, monkeypatch, tmp_path):
    settings, repo, tables = world
    monkeypatch.setenv("AWO_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("AWO_MIN_POSITIVE_LABELS", "10")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    policy = tmp_path / "policy.yaml"
    import yaml

    from agents.policy import DEFAULT_POLICY

    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    doc["overrides"] = {"allowed": ["alice", "approver"], "may_unblock": ["alice"]}
    policy.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("AWO_POLICY", str(policy))
    return settings, repo, tables


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def newest_mined(tables) -> str:
    commits = pd.read_parquet(tables / "commits.parquet")
    return str(commits.sort_values("seq")["sha"].iloc[-1])


def decide_json(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["decide", *args, "--json"])
    assert result.exit_code in (0, 3, 4), result.output
    return result.exit_code, json.loads(result.stdout)


def test_decide_on_a_mined_commit_prints_a_schema_valid_decision_and_exits_by_gate(env):
    import jsonschema

    from agents.decision import DECISION_SCHEMA_FILE

    _settings, repo, tables = env
    code, body = decide_json("--repo", str(repo), "--sha", newest_mined(tables))
    jsonschema.validate(body, json.loads(DECISION_SCHEMA_FILE.read_text()))
    assert code == {"fast_track": 0, "standard": 0, "senior_review": 3, "block": 4}[body["gate"]]
    assert body["probability"] is not None and body["model"]["name"] == "change-risk"
    assert body["decision_id"] and len(body["audit_head"]) == 64
    verified = runner.invoke(app, ["audit", "verify", "--head", body["audit_head"]])
    assert verified.exit_code == 0 and "audit log ok" in verified.output
    explained = runner.invoke(app, ["explain", body["decision_id"]])
    assert explained.exit_code == 0 and body["decision_id"] in explained.output
    assert f"Final gate: {body['gate']}" in explained.output


def test_an_unmined_range_is_measured_from_git_and_scored(env, tmp_path):
    _settings, repo, _tables = env
    work = tmp_path / "pr"
    shutil.copytree(repo, work)
    base = git(work, "rev-parse", "HEAD").strip()
    git(work, "checkout", "-q", "-b", "feature")
    target = next(p for p in sorted(work.rglob("*.py")) if ".git" not in p.parts)
    target.write_text(target.read_text() + "\n\ndef added(x):\n    return x * 2\n")
    (work / "db").mkdir(exist_ok=True)
    (work / "db" / "migrations").mkdir(exist_ok=True)
    (work / "db" / "migrations" / "0099_index.sql").write_text("CREATE INDEX i ON t(c);\n")
    git(work, "add", "-A")
    git(work, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "Add index")
    _code, body = decide_json("--repo", str(work), "--name", "demo", "--base", base, "--head", "feature")
    assert body["probability"] is not None and body["fallback"] is None
    assert "migrations-need-performance" in body["rules_fired"]
    assert body["gate"] != "fast_track"


def test_an_unreachable_registry_fails_closed_with_the_on_error_gate(env, monkeypatch):
    _settings, repo, tables = env
    port = free_port()
    monkeypatch.setenv("AWO_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = runner.invoke(app, ["decide", "--repo", str(repo), "--sha", newest_mined(tables)])
    assert result.exit_code == 3, result.output
    assert "SENIOR REVIEW" in result.output and "on_error" in result.output


def test_overrides_are_allowed_only_to_whom_the_policy_names_and_are_audited(env, monkeypatch):
    import getpass

    _settings, repo, tables = env
    _, body = decide_json("--repo", str(repo), "--sha", newest_mined(tables))

    def override_as(user: str, gate: str, reason: str):
        monkeypatch.setattr(getpass, "getuser", lambda: user)  # the identity is who runs the command
        return runner.invoke(app, ["override", body["decision_id"], "--gate", gate, "--reason", reason])

    refused = override_as("mallory", "block", "x")
    assert refused.exit_code == 2 and "mallory" in refused.output
    done = override_as("alice", "block", "payment freeze")
    assert done.exit_code == 0, done.output
    lifted = override_as("approver", "standard", "freeze over")
    assert lifted.exit_code == 2 and "may not lift a block" in lifted.output
    explained = runner.invoke(app, ["explain", body["decision_id"]]).output
    assert (
        "Override by alice" in explained
        and "payment freeze" in explained
        and "Final gate: block" in explained
    )
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0


def test_the_audit_verify_command_fails_on_an_edited_log(env):
    settings, repo, tables = env
    decide_json("--repo", str(repo), "--sha", newest_mined(tables))
    log = settings.data_dir / "audit" / "decisions.jsonl"
    original = log.read_text()
    try:
        log.write_text(
            original.replace('"gate":"block"', '"gate":"fast_track"')
            .replace('"gate":"senior_review"', '"gate":"fast_track"')
            .replace('"gate":"standard"', '"gate":"fast_track"', 1)
        )
        if log.read_text() == original:  # every record was fast_track already: edit another field
            log.write_text(original.replace('"environment":"production"', '"environment":"staging"', 1))
        result = runner.invoke(app, ["audit", "verify"])
        assert result.exit_code == 1 and "FAILED" in result.output
    finally:
        log.write_text(original)


def test_the_risk_api_can_be_the_scorer_over_http(env, monkeypatch):
    import uvicorn

    from serving.app import create_app

    settings, repo, tables = env
    token = "awo_reader_token_0123456789"
    api_settings = settings.model_copy(
        update={"api_tokens": [ApiToken(name="ci", sha256=digest(token), scopes=["risk:read"])]}
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(api_settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        monkeypatch.setenv("AWO_RISK_API_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWO_RISK_API_TOKEN", token)
        sha = newest_mined(tables)
        _, over_http = decide_json("--repo", str(repo), "--sha", sha)
        monkeypatch.delenv("AWO_RISK_API_URL")
        _, in_process = decide_json("--repo", str(repo), "--sha", sha)
        assert over_http["probability"] == pytest.approx(in_process["probability"], abs=1e-9)
        assert over_http["gate"] == in_process["gate"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_agents_service_decides_and_overrides_with_scoped_tokens(env):
    from fastapi.testclient import TestClient

    from agents.service import create_agent_app

    _settings, repo, tables = env
    service_settings = load_settings().model_copy(
        update={
            "repositories": {"demo": repo},
            "api_tokens": [
                ApiToken(name="ci", sha256=digest(DECIDER), scopes=["decisions:write", "decisions:read"]),
                ApiToken(name="approver", sha256=digest(APPROVER), scopes=["decisions:override"]),
            ],
        }
    )
    client = TestClient(create_agent_app(service_settings))
    query = {"repo": "demo", "sha": newest_mined(tables)}
    assert client.post("/v1/decisions", json=query).status_code == 401
    assert client.post("/v1/decisions", json={"repo": "../etc", "sha": "a" * 40}).status_code == 401
    auth = {"Authorization": f"Bearer {DECIDER}"}
    assert (
        client.post("/v1/decisions", json={"repo": "elsewhere", "sha": "a" * 40}, headers=auth).status_code
        == 404
    )
    response = client.post("/v1/decisions", json=query, headers=auth)
    assert response.status_code == 200, response.text
    decided = response.json()
    decision_id = decided["decision"]["decision_id"]
    assert decided["exit_code"] == decided["decision"]["exit_code"]
    got = client.get(f"/v1/decisions/{decision_id}", headers=auth).json()
    assert got["decision"]["decision_id"] == decision_id and "Final gate" in got["explanation"]
    override = client.post(
        f"/v1/decisions/{decision_id}/override",
        json={"gate": "block", "reason": "change freeze"},
        headers={"Authorization": f"Bearer {APPROVER}"},
    )
    assert override.status_code == 200, override.text
    refused = client.post(
        f"/v1/decisions/{decision_id}/override", json={"gate": "block", "reason": "x"}, headers=auth
    )  # token 'ci' may decide, not override
    assert refused.status_code == 403 and "decisions:override" in refused.json()["message"]
    assert (
        client.get(
            f"/v1/decisions/{decision_id}", headers={"Authorization": f"Bearer {APPROVER}"}
        ).status_code
        == 403
    )
    assert client.get("/v1/audit/verify", headers=auth).json()["ok"] is True


def test_services_named_by_the_caller_add_to_those_of_the_files_never_replace_them(env):
    settings, repo, tables = env
    from agents.assemble import ChangeRef, assemble
    from agents.policy import load_policy

    sha = newest_mined(tables)
    ref = ChangeRef(repo_path=repo, repo="demo", sha=sha)
    derived = assemble(ref, settings, load_policy()).services
    claimed = assemble(ref, settings, load_policy(), services=["elsewhere"]).services
    assert set(derived) | {"elsewhere"} == set(claimed)


def test_a_plan_cannot_run_looser_than_its_decision_is_in_the_audit_log(env, tmp_path, monkeypatch):
    import getpass

    import yaml

    _settings, repo, tables = env
    sha = newest_mined(tables)
    plan = tmp_path / "ship.yaml"
    _, body = decide_json("--repo", str(repo), "--sha", sha)
    service = body["services"][0]
    made = runner.invoke(
        app, ["plan", f"ship {sha[:12]} of {service} to production", "--repo", str(repo), "--out", str(plan)]
    )
    assert made.exit_code == 0, made.output
    decision_id = yaml.safe_load(plan.read_text())["decision_id"]
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    assert (
        runner.invoke(app, ["override", decision_id, "--gate", "block", "--reason", "freeze"]).exit_code == 0
    )
    result = runner.invoke(app, ["run", str(plan), "--approve"])
    assert result.exit_code == 2 and "block in the audit log" in result.output
