"""Every CLI error is one line `error: ...` on stderr with exit code 2 and no traceback; Ctrl-C is 130;
a bug is not dressed up as a user error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


def _one_error_line(stderr: str, *words: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _awo(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "AWO_CONFIG"}
    full.update({"AWO_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args], env=full, capture_output=True, text=True, timeout=120
    )


def test_serve_with_a_bad_setting_is_one_line_not_a_traceback(tmp_path):
    proc = _awo(["serve", "--port", "1"], {"AWO_MAX_BATCH": "0"}, tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, "max_batch")


def test_mlflow_ui_with_a_missing_config_file_is_one_line(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    proc = _awo(["mlflow-ui", "--port", "1"], {"AWO_CONFIG": str(missing)}, tmp_path)
    assert proc.returncode == 2
    _one_error_line(proc.stderr, str(missing), "does not exist")


def test_malformed_config_yaml_is_one_line_naming_the_file(tmp_path, monkeypatch):
    config = tmp_path / "awo.yaml"
    config.write_text("data: [1\n  bad: : x\n")  # the YAML parser's message spans four lines
    monkeypatch.setenv("AWO_CONFIG", str(config))
    result = runner.invoke(app, ["mine", str(tmp_path)])
    assert result.exit_code == 2
    _one_error_line(result.stderr, str(config), "not valid YAML", "line 2")


def test_an_error_message_that_looks_like_markup_is_printed_as_is(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["token", "--name", "ci", "--scopes", "[bold]x"])
    assert result.exit_code == 2
    _one_error_line(result.stderr, "unknown scopes ['[bold]x']")


def test_ctrl_c_exits_130(tmp_path, monkeypatch):
    import pipelines.mine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipelines.mine, "mine_repository", interrupted)
    result = runner.invoke(app, ["mine", str(tmp_path), "--data", str(tmp_path / "t")])
    assert result.exit_code == 130
    assert "Traceback" not in result.output


def test_a_bug_is_not_turned_into_a_user_error(tmp_path, monkeypatch):
    import pipelines.mine

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipelines.mine, "mine_repository", broken)
    result = runner.invoke(app, ["mine", str(tmp_path), "--data", str(tmp_path / "t")])
    assert isinstance(result.exception, ZeroDivisionError)
    assert "error:" not in result.output


@pytest.fixture
def applied_store(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AWO_CONFIG", raising=False)
    applied = runner.invoke(app, ["features", "apply"])
    assert applied.exit_code == 0, applied.output
    return tmp_path


def test_training_set_before_build_names_the_missing_sources_and_the_command(applied_store):
    entities = applied_store / "entities.csv"
    pd.DataFrame({"repo": ["x"], "sha": ["abc"], "event_timestamp": ["2024-01-01T00:00:00Z"]}).to_csv(
        entities, index=False
    )
    result = runner.invoke(
        app, ["features", "training-set", "--entities", str(entities), "--out", str(applied_store / "o.pq")]
    )
    assert result.exit_code == 2
    _one_error_line(result.stderr, "commit_change.parquet", "awo features build")


def test_features_list_shows_services_with_their_features_and_the_views(applied_store):
    result = runner.invoke(app, ["features", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "feature services:"
    service = next(ln for ln in lines if ln.startswith("  change_risk_v1 ("))
    assert "44 features" in service and ": ns, nd, nf, entropy" in service
    assert any(
        ln.startswith("  commit_change (keys repo, sha; 25 features, source not built yet)") for ln in lines
    )
    code = next(ln for ln in lines if ln.startswith("  change_risk_v2 ("))
    assert "added_lines, removed_lines, message" in code  # v1's features, then the code of the diff
    assert lines[-1].startswith("3 feature services, 8 feature views, ")


def test_features_list_before_apply_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["features", "list"])
    assert result.exit_code == 2
    _one_error_line(result.stderr, "empty", "awo features apply")


def test_the_unknown_feature_error_points_to_a_command_that_exists(applied_store):
    from features.settings import load_settings
    from features.store import FeatureNotFound, open_store, resolve_features

    with pytest.raises(FeatureNotFound, match="awo features list"):
        resolve_features(open_store(load_settings()), ["no_such_feature"])
    assert runner.invoke(app, ["features", "list"]).exit_code == 0


def test_data_that_looks_like_markup_is_printed_as_is_in_summaries(tmp_path):
    # A rejected value quoting rich markup ("[/x]" closes a tag never opened) once crashed the summary.
    rows = tmp_path / "deployments.csv"
    rows.write_text(
        "deploy_id,service,environment,sha,started_at,finished_at,strategy,outcome\n"
        "d1,[/x],production,[/x],2024-01-01T10:00:00Z,,rolling,succeeded\n"
    )
    env = {"AWO_DATA_DIR": str(tmp_path / "root")}
    result = CliRunner().invoke(
        app, ["ingest", "deployments", str(rows), "--data", str(tmp_path / "t")], env=env
    )
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.output and "rejected" in result.output


def test_awo_token_makes_every_scope_the_settings_accept_including_the_decisions_page(tmp_path, monkeypatch):
    import yaml

    from features.settings import ApiToken

    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["token", "--name", "oncall", "--scopes", "decisions:read,decisions:approve"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1].strip()  # the config line: `- {name: ..., sha256: ...}`
    token = ApiToken.model_validate(yaml.safe_load(line)[0])
    assert (token.name, token.scopes) == ("oncall", ["decisions:read", "decisions:approve"])
