"""The `awo` command line, pseudonymisation, and the demo world's ground truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from features.settings import load_settings
from pipelines.cli import app
from pipelines.demo_world import generate_world
from pipelines.mine import mine_repository
from tests.conftest import git

runner = CliRunner()


def test_help_is_fast_because_heavy_libraries_stay_unimported():
    code = (
        "import sys; from pipelines.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('feast', 'mlflow', 'lightgbm', 'pandas', 'pydriller') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_mine_prints_a_summary_in_numbers(small_world, tmp_path):
    result = runner.invoke(app, ["mine", str(small_world.repo), "--data", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "mined 600 of 600 commits (600 new, 0 recomputed)" in result.output
    assert "fix commits" in result.output and "commits/s" in result.output
    again = runner.invoke(app, ["mine", str(small_world.repo), "--data", str(tmp_path / "t")])
    assert "up to date" in again.output


def test_pseudonymised_tables_hold_no_raw_identity(small_world, tmp_path):
    settings = load_settings(data_dir=tmp_path, pseudonymize=True, identity_salt="s3cret")
    mine_repository(small_world.repo, settings, tmp_path / "t")
    commits = pd.read_parquet(tmp_path / "t" / "commits.parquet")
    files = pd.read_parquet(tmp_path / "t" / "files.parquet")
    text = commits.astype(str).to_csv() + files.astype(str).to_csv()
    assert "@example.org" not in text and "Ada Moreau" not in text
    assert (commits["author_name"] == commits["author_id"]).all()
    plain = load_settings(data_dir=tmp_path, identity_salt="other")
    mine_repository(small_world.repo, plain, tmp_path / "u")
    other = pd.read_parquet(tmp_path / "u" / "commits.parquet")
    assert set(other["author_id"]).isdisjoint(commits["author_id"])  # the salt matters
    assert other["author_id"].nunique() == commits["author_id"].nunique()


def test_demo_world_is_deterministic_for_a_seed(tmp_path):
    a = generate_world(tmp_path / "a", seed=3, n_commits=120)
    b = generate_world(tmp_path / "b", seed=3, n_commits=120)
    c = generate_world(tmp_path / "c", seed=4, n_commits=120)
    head = [git(w.repo, "rev-parse", "HEAD").strip() for w in (a, b, c)]
    assert head[0] == head[1] != head[2]
    assert pd.read_parquet(a.truth_path).equals(pd.read_parquet(b.truth_path))


def test_demo_world_truth_is_consistent_with_its_history(small_world):
    truth = pd.read_parquet(small_world.truth_path)
    shas = git(small_world.repo, "rev-list", "--reverse", "main").split()
    assert list(truth["sha"]) == shas
    assert 0.12 < truth["bug_inducing"].mean() < 0.45  # real projects: 12-49% (shared/data/README.md)
    position = {sha: i for i, sha in enumerate(shas)}
    for row in truth[truth["bug_inducing"]].itertuples():
        assert all(position[fix] > position[row.sha] for fix in row.fixed_by)
    fixes = truth[truth["is_fix"]]
    assert fixes["fixes"].map(len).max() > 1  # some fixes repair several defects at once
    inducing = set(truth.loc[truth["bug_inducing"], "sha"])
    assert all(set(f) <= inducing for f in fixes["fixes"])
    assert (truth.loc[truth["bug_inducing"], "fixed_by"].map(len) == 0).any()  # some never fixed
    authors = git(small_world.repo, "log", "--format=%aN", "main").splitlines()
    assert "B. Haddad" not in set(authors) and "dependabot[bot]" in set(authors)  # .mailmap applies


def test_demo_world_signal_is_as_noisy_as_real_data(small_world, tmp_path):
    mine_repository(small_world.repo, load_settings(data_dir=tmp_path), tmp_path / "t")
    commits = pd.read_parquet(tmp_path / "t" / "commits.parquet")
    truth = pd.read_parquet(small_world.truth_path)
    data = commits.merge(truth, on="sha")
    churn = data["la"] + data["ld"]
    top = data.loc[churn.rank(ascending=False, method="first") <= len(data) * 0.2, "bug_inducing"].sum()
    share = top / data["bug_inducing"].sum()
    assert 0.25 < share < 0.6  # real projects: the 20% largest commits hold 28-47% of defects


def test_data_root_comes_from_the_environment_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("AWO_CONFIG", raising=False)
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "root"))
    monkeypatch.chdir(tmp_path)
    assert load_settings().repo_data_dir("x") == tmp_path / "root" / "x"
    monkeypatch.delenv("AWO_DATA_DIR")
    checkout = Path(__file__).resolve().parents[1]
    assert load_settings().data_dir == checkout / "data"  # ./data of the checkout, wherever we run from


def test_awo_console_script_exits_non_zero_on_error(tmp_path):
    env = {**os.environ, "AWO_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "mine", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_config_file_sections_flatten_into_settings_including_the_git_hosts(tmp_path, monkeypatch):
    config = tmp_path / "awo.yaml"
    config.write_text(
        "agents:\n  kube_namespace: shop\nhosts:\n  github_api_url: https://ghe.example.com/api/v3\n"
        "  github_webhook_secret: s3cret\nserving:\n  max_batch: 50\n"
    )
    monkeypatch.setenv("AWO_CONFIG", str(config))
    monkeypatch.delenv("AWO_MAX_BATCH", raising=False)
    settings = load_settings()
    assert settings.kube_namespace == "shop"
    assert settings.github_api_url == "https://ghe.example.com/api/v3"
    assert settings.github_webhook_secret is not None
    assert settings.github_webhook_secret.get_secret_value() == "s3cret"
    assert settings.max_batch == 50
