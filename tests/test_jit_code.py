"""The code-reading change-risk model, its tokens and `awo benchmark jit-code`, on a slice of the public
OpenStack JIT data (../shared/data/jit/openstack-jitline)."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.change_metrics import KAMEI_METRICS
from features.code_tokens import MAX_LINE_CHARS, MAX_LINES, commit_text, tokens
from models.code_model import CodeModelConfig, CodeRiskModel, time_folds
from models.jit_code_benchmark import load_commits
from pipelines.cli import app

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "jit" / "openstack-jitline"
pytestmark = pytest.mark.skipif(not (DATA / "commits.parquet").is_file(), reason="public JIT data absent")
FAST = CodeModelConfig(text_folds=3, metrics={"n_estimators": 200, "early_stopping_rounds": 30})


@pytest.fixture(scope="module")
def commits() -> pd.DataFrame:
    return load_commits(DATA).iloc[:1500].reset_index(drop=True)


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


def test_out_of_fold_folds_only_fit_on_older_rows() -> None:
    folds = time_folds(100, 5)
    assert len(folds) == 4
    for fit_rows, score_rows in folds:
        assert fit_rows.max() < score_rows.min()
    assert np.concatenate([s for _, s in folds]).tolist() == list(range(20, 100))


def test_out_of_fold_scores_do_not_change_when_the_future_changes(commits: pd.DataFrame) -> None:
    model = CodeRiskModel(list(KAMEI_METRICS), FAST)
    from models.code_model import documents

    texts = documents(commits)
    y = commits["bug"].to_numpy()
    flipped = y.copy()
    flipped[1000:] = 1 - flipped[1000:]  # rows 1000+ are the last fold: scored, never fitted on
    before, after = model.out_of_fold_scores(texts, y), model.out_of_fold_scores(texts, flipped)
    assert np.isnan(before[:500]).all()
    np.testing.assert_array_equal(before[:1000], after[:1000])


def test_model_scores_and_explains_with_the_code_risk_driver(fitted: CodeRiskModel, commits) -> None:
    p = fitted.predict_proba(commits.iloc[:50])
    assert p.shape == (50,) and ((p >= 0) & (p <= 1)).all()
    names = {name for row in fitted.explain(commits.iloc[:50], top=20).drivers for name, _, _ in row}
    assert "code_risk" in names


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
    frame = pd.read_parquet(DATA / "commits.parquet").iloc[:1500]
    frame = frame.assign(split=np.where(np.arange(len(frame)) % 5 == 0, "test", "train"))
    frame.to_parquet(tmp_path / "commits.parquet")
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(app, ["benchmark", "jit-code", "--dataset", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert {"project", "model", "auc", "f1", "precision", "recall", "train_seconds", "split"} <= set(rows[0])
    assert rows[0]["model"].startswith("awo") and "vs LightGBM 300 trees (14 metrics)" in rows[0]
    assert {r["split"] for r in rows} == {"published", "time-ordered 80/20"}
