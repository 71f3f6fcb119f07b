"""The code-reading change-risk model, its tokens and `awo benchmark jit-code`, on samples of the public
OpenStack JIT data (../shared/data/jit/openstack-jitline) spread over its whole history (its first commits
have almost no bug-inducing ones)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.change_metrics import KAMEI_METRICS
from features.code_tokens import (
    CHANGED_PATHS,
    MAX_LINE_CHARS,
    MAX_LINES,
    changed_paths,
    commit_text,
    path_tokens,
    tokens,
)
from models.code_model import CODE_RISK, CodeModelConfig, CodeRiskModel, documents, time_folds
from models.jit_code_benchmark import JITLINE, load_commits
from models.risk_model import ModelConfig
from pipelines.cli import app

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jit" / "openstack-jitline"
pytestmark = pytest.mark.skipif(not (DATA / "commits.parquet").is_file(), reason="public JIT data absent")
FAST = CodeModelConfig(
    text_folds=3, metrics=ModelConfig(n_estimators=200, early_stopping_rounds=30), path_tokens=True
)


def sample(folder: Path, rows: int, jitline: bool = False) -> Path:
    """A folder like DATA holding `rows` commits drawn at random from the whole history."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.read_parquet(DATA / "commits.parquet").sample(rows, random_state=0).to_parquet(
        folder / "commits.parquet"
    )
    if jitline:
        shutil.copy(DATA / JITLINE, folder / JITLINE)
    return folder


@pytest.fixture(scope="module")
def commits(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return load_commits(sample(tmp_path_factory.mktemp("jit"), 1500))


@pytest.fixture(scope="module")
def fitted(commits: pd.DataFrame) -> CodeRiskModel:
    return CodeRiskModel(list(KAMEI_METRICS), FAST).fit(commits, commits["bug"], commits["committed_at"])


def test_tokens_normalise_literals_and_split_identifiers() -> None:
    assert tokens('self.getHTTPResponse = 42 + "x"') == [
        "self", ".", "gethttpresponse", "get", "http", "response", "=", "<num>", "+", "<str>",
    ]  # fmt: skip
    assert tokens("max_retry_count") == ["max_retry_count", "max", "retry", "count"]


def test_commit_text_prefixes_vocabularies_and_caps_lines() -> None:
    text = commit_text(["x = 1"], ["x = 2"], "Fix x\n\nChange-Id: I123")
    assert text.split() == ["a:x", "a:=", "a:<num>", "r:x", "r:=", "r:<num>", "m:fix", "m:x"]
    long = commit_text(["y" * 1000] * (MAX_LINES + 5), [], "")
    assert long.split() == ["a:" + "y" * MAX_LINE_CHARS] * MAX_LINES


def test_path_tokens_are_the_words_of_each_distinct_path_once() -> None:
    paths = ["nova/compute/rpcApi.py", "nova/compute/rpcApi.py", "etc/nova.conf"]
    assert path_tokens(paths) == ["nova", "compute", "rpcapi", "rpc", "api", "py", "etc", "nova", "conf"]
    text = commit_text(["x = 1"], [], "", paths=["nova/api.py"])
    assert text.split() == ["a:x", "a:=", "a:<num>", "p:nova", "p:api", "p:py"]


def test_changed_paths_prefer_every_file_then_the_paths_of_added_lines() -> None:
    assert changed_paths(["a/b.py", "gone.txt"], ["a/b.py:3"]) == ["a/b.py", "gone.txt"]
    assert changed_paths(None, ["x/y.py:1", "x/y.py:2", "z.cfg:9", "odd:name.py:4"]) == [
        "x/y.py", "z.cfg", "odd:name.py",
    ]  # fmt: skip
    assert changed_paths(None, None) == [] and changed_paths(float("nan"), None) == []


def test_load_commits_keeps_the_paths_of_delete_only_files(commits: pd.DataFrame) -> None:
    removed_only = [
        (paths, str(f["path"]))
        for files, paths in zip(commits["files"], commits[CHANGED_PATHS], strict=True)
        for f in files
        if len(f["added"]) == 0 and len(f["removed"]) > 0
    ]
    assert removed_only  # the sample holds such files
    assert all(path in paths for paths, path in removed_only)
    assert (commits[CHANGED_PATHS].map(len) == commits["files"].map(len)).all()


def test_documents_read_the_same_path_words_from_both_input_shapes(commits: pd.DataFrame) -> None:
    rows = commits.iloc[:40]
    as_mined = rows.drop(columns=[CHANGED_PATHS]).assign(
        added_where=[[f"{p}:1" for p in paths] for paths in rows[CHANGED_PATHS]]
    )
    from_files, from_where = documents(rows), documents(as_mined)
    assert from_files == from_where and all(" p:" in d for d in from_files)
    bare = documents(rows.drop(columns=[CHANGED_PATHS]))
    assert not any(" p:" in d for d in bare) and bare == documents(rows, paths=False)


def test_out_of_fold_folds_only_fit_on_older_rows() -> None:
    folds = time_folds(100, 5)
    assert len(folds) == 4
    for fit_rows, score_rows in folds:
        assert fit_rows.max() < score_rows.min()
    assert np.concatenate([s for _, s in folds]).tolist() == list(range(20, 100))


def test_out_of_fold_scores_do_not_change_when_the_future_changes(commits: pd.DataFrame) -> None:
    model = CodeRiskModel(list(KAMEI_METRICS), FAST)
    first = commits.iloc[:600]
    texts, y, metrics = documents(first), first["bug"].to_numpy(), first[list(KAMEI_METRICS)].to_numpy(float)
    flipped = y.copy()
    flipped[400:] = 1 - flipped[400:]  # rows 400+ are the last of 3 folds: scored, never fitted on
    before = model.out_of_fold_scores(texts, y, metrics)
    after = model.out_of_fold_scores(texts, flipped, metrics)
    assert np.isnan(before[:200]).all() and np.isfinite(before[200:]).all()
    np.testing.assert_array_equal(before[:400], after[:400])


def test_score_blends_the_booster_and_the_text_model_with_the_learned_weights(
    fitted: CodeRiskModel, commits
) -> None:
    rows = commits.iloc[:50]
    expected = (
        fitted.intercept_
        + fitted.weights_[0] * fitted.risk_.raw_score(rows)
        + fitted.weights_[1] * fitted.text_.score(documents(rows), rows[list(KAMEI_METRICS)].to_numpy(float))
    )
    np.testing.assert_allclose(fitted.raw_score(rows), expected, rtol=0, atol=1e-12)
    assert fitted.weights_[1] > 0  # the linear model adds to the booster on this history
    p = fitted.predict_proba(rows)
    np.testing.assert_array_equal(p, fitted.calibrated_probability(fitted.raw_score(rows)))
    assert ((p > 0) & (p < 1)).all()


def test_explanations_sum_to_the_score_they_explain(fitted: CodeRiskModel, commits) -> None:
    rows = commits.iloc[:30]
    raw = fitted.raw_score(rows)
    contributions = fitted.contributions(rows)
    assert list(contributions.columns) == [*fitted.feature_columns, "bias"]
    np.testing.assert_allclose(contributions.sum(axis=1).to_numpy(), raw, atol=1e-9)
    explanation = fitted.explain(rows, top=len(fitted.feature_columns))
    totals = [
        bias + sum(c for _, _, c in row)
        for bias, row in zip(explanation.bias, explanation.drivers, strict=True)
    ]
    np.testing.assert_allclose(totals, raw, atol=1e-9)
    code = [v for row in explanation.drivers for name, v, _ in row if name == CODE_RISK]
    words, _ = fitted.text_.parts(documents(rows), rows[list(KAMEI_METRICS)].to_numpy(float))
    np.testing.assert_allclose(code, words, atol=1e-12)
    np.testing.assert_allclose(contributions[CODE_RISK], fitted.weights_[1] * words, atol=1e-12)


def test_importance_lists_the_booster_columns_and_the_strongest_linear_terms(fitted: CodeRiskModel) -> None:
    table = fitted.importance()
    booster, linear = table[table["model"] == "metrics"], table[table["model"] == "linear"]
    assert set(booster["feature"]) == set(fitted.risk_.feature_columns) and booster["gain"].max() > 0
    assert len(linear) == 20 and linear["coefficient"].abs().is_monotonic_decreasing
    families = ["a:", "r:", "m:", "p:"]
    tokens_or_metrics = linear["feature"].str[:2].isin(families) | linear["feature"].isin(KAMEI_METRICS)
    assert tokens_or_metrics.all() and linear["feature"].str[:2].isin(families).any()


def test_explain_lines_ranks_the_line_with_the_riskiest_token_first(fitted: CodeRiskModel, commits) -> None:
    coef = fitted.text_.logistic_.coef_[0]
    vocabulary = fitted.text_.vectorizer_.vocabulary_
    riskiest = max(
        (t for t in vocabulary if t.startswith("a:") and t[2:].isalpha()), key=lambda t: coef[vocabulary[t]]
    )
    safest = min(
        (t for t in vocabulary if t.startswith("a:") and t[2:].isalpha()), key=lambda t: coef[vocabulary[t]]
    )
    row = commits.iloc[[0]].copy()
    row.at[row.index[0], "added_lines"] = [safest[2:], riskiest[2:], safest[2:]]
    [drivers] = fitted.explain_lines(row, top=3)
    assert drivers[0].index == 1 and drivers[0].line == riskiest[2:] and drivers[0].score > 0
    assert all(d.score > 0 for d in drivers)


def test_a_model_trained_on_paths_reads_them_in_either_shape_and_scores_a_frame_without_them(
    fitted: CodeRiskModel, commits
) -> None:
    rows = commits.iloc[:200]
    assert fitted.input_columns[-1] == CHANGED_PATHS
    assert any(t.startswith("p:") for t in fitted.text_.vectorizer_.vocabulary_)
    as_served = rows.drop(columns=[CHANGED_PATHS]).assign(
        added_where=[[f"{p}:7" for p in paths] for paths in rows[CHANGED_PATHS]]
    )
    np.testing.assert_array_equal(fitted.predict_proba(as_served), fitted.predict_proba(rows))
    without = fitted.predict_proba(rows.drop(columns=[CHANGED_PATHS]))
    no_paths = fitted.predict_proba(rows.assign(**{CHANGED_PATHS: [[] for _ in range(len(rows))]}))
    assert np.isfinite(without).all() and ((without > 0) & (without < 1)).all()
    np.testing.assert_array_equal(without, no_paths)
    assert (np.abs(without - fitted.predict_proba(rows)) > 1e-6).mean() > 0.5  # the paths move scores


def test_joblib_round_trip_gives_identical_probabilities(fitted: CodeRiskModel, commits, tmp_path) -> None:
    joblib.dump(fitted, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(
        loaded.predict_proba(commits.iloc[:100]), fitted.predict_proba(commits.iloc[:100])
    )


def test_cli_names_the_missing_column(tmp_path: Path) -> None:
    pd.read_parquet(DATA / "commits.parquet").drop(columns=["la"]).head(50).to_parquet(
        tmp_path / "commits.parquet"
    )
    result = CliRunner().invoke(app, ["benchmark", "jit-code", "--dataset", str(tmp_path)])
    assert result.exit_code != 0
    assert "'la'" in result.output and "commits.parquet" in result.output


def test_cli_out_writes_rows_with_the_documented_keys(tmp_path: Path) -> None:
    folder = sample(tmp_path / "data", 700, jitline=True)
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(
        app, ["benchmark", "jit-code", "--dataset", str(folder), "--out", str(out), "--bootstrap", "50"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert {"project", "model", "auc", "f1", "precision", "recall", "train_seconds", "split"} <= set(rows[0])
    assert rows[0]["model"].startswith("awo") and "vs LightGBM 300 trees (14 metrics)" in rows[0]
    assert "vs JITLine (published predictions)" in rows[0]  # the sample's test commits are in its file
    test = rows[0]["vs JITLine (published predictions)"]
    assert test["ci_low"] <= test["auc_diff"] <= test["ci_high"]
    assert {r["split"] for r in rows} == {"published", "time-ordered 80/20"}


def test_cli_rejects_too_few_bootstrap_resamples(tmp_path: Path) -> None:
    folder = sample(tmp_path, 200)
    result = CliRunner().invoke(app, ["benchmark", "jit-code", "--dataset", str(folder), "--bootstrap", "3"])
    assert result.exit_code != 0 and "bootstrap" in result.output
