"""`awo config diff|check` on real overlay folders: a missing key, a must-equal value that differs, an
AWS-key-shaped secret and a high-entropy password found, references and allowed differences left alone,
usage errors exit 2 naming the file and line, and a rollout refused for an environment whose check fails."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agents.config_check import ConfigError, SecretScanner, check_config, compare, read_overlays
from agents.executor import DryRunExecutor
from agents.goals import parse_goal
from agents.planner import plan_goal
from agents.policy import DEFAULT_POLICY, load_policy
from agents.rollouts import RolloutError, carry_out, config_refusal
from features.settings import load_settings
from pipelines.cli import app

POLICY = load_policy()
RULES = POLICY.config
runner = CliRunner()
AWS_KEY = "AKIAZ3MXQ7PL4HBWN2RT"
PASSWORD = "9fQ2kLm8Zx7Rt4Vb1Nc6Hy3Jd5Wp0Sq"

PAYMENTS = """\
http:
  timeout_ms: {timeout}
  retries: 3
db:
  host: {host}
  pool:
    size: {pool}
  password: {password}
features:
  new_checkout: true
"""


def write(root: Path, env: str, name: str, text: str) -> Path:
    path = root / env / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def clean_root(tmp_path: Path) -> Path:
    """dev, staging, prod: hosts and pool sizes differ (allowed), passwords are references, the rest equal."""
    root = tmp_path / "config"
    refs = {
        "dev": '"${DB_PASSWORD}"',
        "staging": '"vault:secret/data/payments#password"',
        "prod": '"${DB_PASSWORD}"',
    }
    for env, pool in (("dev", 2), ("staging", 10), ("prod", 40)):
        write(
            root,
            env,
            "payments.yaml",
            PAYMENTS.format(timeout=3000, host=f"db.{env}.internal", pool=pool, password=refs[env]),
        )
        write(
            root,
            env,
            "orders.env",
            f"# orders service\nORDERS_URL=https://orders.{env}.example.com\nBATCH=50\n",
        )
        write(root, env, "search.json", json.dumps({"index": {"shards": 3, "timeout_ms": 800}}, indent=2))
    return root


@pytest.fixture
def dirty_root(clean_root: Path) -> Path:
    """The clean set with four planted problems: prod misses `http.retries`, prod's `http.timeout_ms`
    differs, staging's orders.env holds an AWS access key, prod's database password is written out."""
    write(
        clean_root,
        "prod",
        "payments.yaml",
        "http:\n  timeout_ms: 5000\ndb:\n  host: db.prod.internal\n  pool:\n    size: 40\n"
        f'  password: "{PASSWORD}"\nfeatures:\n  new_checkout: true\n',
    )
    write(
        clean_root,
        "staging",
        "orders.env",
        f"ORDERS_URL=https://orders.staging.example.com\nBATCH=50\nexport AWS_ACCESS_KEY_ID={AWS_KEY}\n",
    )
    (clean_root / "dev" / "orders.env").write_text(
        (clean_root / "dev" / "orders.env").read_text() + "AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID}\n"
    )
    (clean_root / "prod" / "orders.env").write_text(
        (clean_root / "prod" / "orders.env").read_text() + "AWS_ACCESS_KEY_ID=vault:aws/creds/orders\n"
    )
    return clean_root


def test_a_clean_set_has_no_findings_and_check_exits_0(clean_root: Path):
    result = runner.invoke(app, ["config", "check", "--root", str(clean_root)])
    assert result.exit_code == 0, result.output
    assert "3 environments" in result.output and "3 services" in result.output
    assert "0 missing, 0 must-equal differing, 0 plain-text secrets" in result.output


def test_check_finds_the_missing_key_the_differing_value_and_both_secrets(dirty_root: Path):
    result = runner.invoke(app, ["config", "check", "--root", str(dirty_root), "--json"])
    assert result.exit_code == 4, result.output
    body = json.loads(result.stdout)
    found = sorted((f["kind"], f["service"], f["key"], tuple(f["environments"])) for f in body["findings"])
    assert found == [
        ("differs", "payments", "http.timeout_ms", ("dev", "prod", "staging")),
        ("missing", "payments", "http.retries", ("prod",)),
        ("secret", "orders", "AWS_ACCESS_KEY_ID", ("staging",)),
        ("secret", "payments", "db.password", ("prod",)),
    ]
    assert body["counts"] == {"missing": 1, "differs": 1, "secret": 2}
    by_key = {f["key"]: f for f in body["findings"]}
    assert "AWS Access Key" in by_key["AWS_ACCESS_KEY_ID"]["detail"]
    assert by_key["AWS_ACCESS_KEY_ID"]["file"].endswith("staging/orders.env")
    assert by_key["AWS_ACCESS_KEY_ID"]["line"] == 3
    assert "High Entropy String" in by_key["db.password"]["detail"] and by_key["db.password"]["line"] == 7
    assert (
        "dev=3000" in by_key["http.timeout_ms"]["detail"]
        and "prod=5000" in by_key["http.timeout_ms"]["detail"]
    )
    assert PASSWORD not in result.stdout and AWS_KEY not in result.stdout  # secrets are never printed


def test_check_of_named_environments_compares_only_those(dirty_root: Path):
    result = runner.invoke(app, ["config", "check", "dev", "staging", "--root", str(dirty_root), "--json"])
    assert result.exit_code == 4
    kinds = [(f["kind"], f["key"]) for f in json.loads(result.stdout)["findings"]]
    assert kinds == [("secret", "AWS_ACCESS_KEY_ID")]


def test_diff_shows_each_differing_key_per_environment_with_secrets_masked(
    dirty_root: Path, monkeypatch: pytest.MonkeyPatch
):
    from pipelines.cli.root import console

    monkeypatch.setattr(console, "_width", 200)  # a wide terminal: the table's cells unwrapped
    result = runner.invoke(app, ["config", "diff", "dev", "staging", "prod", "--root", str(dirty_root)])
    assert result.exit_code == 0, result.output
    assert (
        "db.host" in result.output
        and "db.staging.internal" in result.output
        and "may differ" in result.output
    )
    assert "must be equal" in result.output and "http.retries" in result.output
    assert PASSWORD not in result.output and "****" in result.output
    body = json.loads(
        runner.invoke(app, ["config", "diff", "dev", "prod", "--root", str(dirty_root), "--json"]).stdout
    )
    pool = next(d for d in body["differences"] if d["key"] == "db.pool.size")
    assert pool["values"] == {"dev": "2", "prod": "40"} and pool["status"] == "may differ"


def test_the_policy_decides_what_must_be_equal_and_what_may_differ(dirty_root: Path):
    relaxed = RULES.model_copy(update={"may_differ": [*RULES.may_differ, "http.timeout_ms"]})
    report = compare(read_overlays(dirty_root), relaxed, SecretScanner())
    assert "http.timeout_ms" not in {f.key for f in report.findings}
    stricter = RULES.model_copy(update={"must_equal": [*RULES.must_equal, "db.pool.size"], "may_differ": []})
    report = compare(read_overlays(dirty_root), stricter, SecretScanner())
    assert {f.key for f in report.findings if f.kind == "differs"} == {"db.pool.size", "http.timeout_ms"}
    host = next(d for d in report.differences if d.key == "db.host")
    assert host.status == "differs"  # neither rule names it: shown by diff, not a finding


def test_references_to_a_secret_store_are_not_secrets(clean_root: Path):
    write(
        clean_root,
        "dev",
        "billing.yaml",
        "stripe:\n  key:\n    secretRef: stripe-live-key-0a9Zq7Lm3Xc8Vb2N\n",
    )
    for env in ("staging", "prod"):
        write(clean_root, env, "billing.yaml", "stripe:\n  key:\n    secretRef: stripe-key\n")
    report = check_config(clean_root, RULES)
    assert [f for f in report.findings if f.kind == "secret"] == []


def test_unparsable_yaml_exits_2_naming_the_file_and_line(clean_root: Path):
    write(clean_root, "staging", "payments.yaml", "http:\n  timeout_ms: 3000\n  retries: [3\ndb: {}\n")
    result = runner.invoke(app, ["config", "check", "--root", str(clean_root)])
    assert result.exit_code == 2
    assert "staging/payments.yaml:4" in result.output and "not valid YAML" in result.output


def test_unparsable_json_and_env_name_the_file_and_line_but_not_the_text(clean_root: Path):
    write(clean_root, "prod", "search.json", '{\n  "index": {\n    "shards": 3,\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"prod/search\.json:4: not valid JSON"):
        read_overlays(clean_root)
    write(clean_root, "prod", "search.json", "{}")
    write(clean_root, "dev", "orders.env", f"BATCH=50\n{PASSWORD}\n")
    with pytest.raises(ConfigError) as caught:
        read_overlays(clean_root)
    assert "dev/orders.env:2: not a KEY=VALUE line" in str(caught.value) and PASSWORD not in str(caught.value)


def test_usage_errors_exit_2(clean_root: Path, tmp_path: Path):
    unknown = runner.invoke(app, ["config", "check", "qa", "--root", str(clean_root)])
    assert unknown.exit_code == 2 and "unknown environment(s) qa" in unknown.output
    missing = runner.invoke(app, ["config", "check", "--root", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere does not exist" in missing.output
    alone = runner.invoke(app, ["config", "diff", "dev", "--root", str(clean_root)])
    assert alone.exit_code == 2 and "two or more" in alone.output


# --- the rollout refuses a failing environment ------------------------------------------------------------

SHA = "4e3b2a1c0d9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d"


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    doc["overrides"] = {"allowed": ["*"], "may_unblock": []}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_rollout_to_an_environment_whose_check_fails_is_refused_before_anything_runs(
    dirty_root: Path, policy_file: Path, tmp_path: Path
):
    settings = load_settings(data_dir=tmp_path / "data", config_root=dirty_root)
    policy = load_policy(policy_file)
    plan = plan_goal(parse_goal(f"ship {SHA} of payments to prod"), None, policy)
    executor = DryRunExecutor()
    with pytest.raises(RolloutError) as caught:
        carry_out(plan, settings, executor=executor, approved_by=getpass.getuser(), policy=policy)
    message = str(caught.value)
    assert f"rollout {plan.plan_id} refused" in message
    assert "prod: payments: http.retries is set in dev, staging but not in prod" in message
    assert "staging: orders: AWS_ACCESS_KEY_ID in staging looks like a plain-text secret" in message
    assert executor.calls == []  # nothing ran
    assert not (settings.data_dir / "rollouts" / f"{plan.plan_id}.yaml").exists()


def test_findings_about_other_environments_do_not_hold_a_rollout(
    clean_root: Path, policy_file: Path, tmp_path: Path
):
    write(
        clean_root,
        "dev",
        "orders.env",
        f"ORDERS_URL=https://orders.dev.example.com\nBATCH=50\nKEY={AWS_KEY}\n",
    )
    for env in ("staging", "prod"):
        write(
            clean_root,
            env,
            "orders.env",
            f"ORDERS_URL=https://orders.{env}.example.com\nBATCH=50\nKEY=${{KEY}}\n",
        )
    policy = load_policy(policy_file)
    report = check_config(clean_root, policy.config)
    assert [(f.kind, f.environments) for f in report.findings] == [("secret", ["dev"])]
    plan = plan_goal(parse_goal(f"ship {SHA} of payments to prod"), None, policy)
    assert config_refusal(plan, clean_root, policy) is None
    settings = load_settings(data_dir=tmp_path / "data", config_root=clean_root)
    executor = DryRunExecutor()
    run = carry_out(plan, settings, executor=executor, approved_by=getpass.getuser(), policy=policy)
    assert run.report.plan.finished() and executor.running[("prod", "payments")] == SHA
    dev = plan_goal(parse_goal(f"ship {SHA} of payments to dev"), None, policy)
    assert "dev: orders: KEY in dev looks like a plain-text secret" in (
        config_refusal(dev, clean_root, policy) or ""
    )


def test_the_root_comes_from_the_config_root_setting_without_root(
    dirty_root: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AWO_CONFIG_ROOT", str(dirty_root))
    result = runner.invoke(app, ["config", "check", "prod"])
    assert result.exit_code == 4, result.output
    assert str(dirty_root) in result.output and "1 environments (prod)" in result.output
