"""Risk models: time-ordered evaluation, effort-aware metrics, calibration, explanations, the public
benchmark's baseline, and the MLflow registry with its promotion gate."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.settings import load_settings
from models.evaluation import effort_at_recall, popt, recall_at_effort, rolling_windows, time_split
from models.jit_benchmark import la_predict, load_project
from models.risk_model import ModelConfig, RiskModel, TooFewLabels
from tests.conftest import SHARED, free_port

JIT = SHARED / "jit" / "issta21"


def test_time_split_never_mixes_periods_and_leaves_the_gap():
    rng = np.random.default_rng(0)
    times = pd.Series(pd.to_datetime(rng.integers(1.5e9, 1.6e9, 5000), unit="s", utc=True))
    split = time_split(times, test_share=0.2, gap=pd.Timedelta(days=20))
    parts = [times.iloc[p] for p in (split.train, split.validation, split.calibration, split.test)]
    for earlier, later in itertools.pairwise(parts):
        assert earlier.max() <= later.min()
    assert parts[3].min() - parts[2].max() >= pd.Timedelta(days=20)
    assert (
        len(split.test) == 1000
        and len(set(np.concatenate([split.train, split.test]))) == len(split.train) + 1000
    )
    for _, train, test in rolling_windows(
        times, pd.Timedelta(days=200), pd.Timedelta(days=30), pd.Timedelta(days=90)
    ):
        assert times.iloc[train].max() + pd.Timedelta(days=30) <= times.iloc[test].min()


def test_effort_aware_metrics_on_a_hand_computed_example():
    y = np.array([1, 0, 1, 0])
    effort = np.array([10, 10, 30, 50])  # total 100
    score = np.array([0.9, 0.8, 0.7, 0.1])  # density order: 0 (0.09), 1 (0.08), 2 (0.023), 3
    # Inspecting 20% of effort covers commits 0 and 1: one of two defects.
    assert recall_at_effort(y, score, effort) == pytest.approx(0.5)
    assert effort_at_recall(y, score, effort) == pytest.approx(0.10)
    assert popt(y, y.astype(float), effort) == pytest.approx(1.0)
    assert popt(y, score, effort) < 1.0


@pytest.fixture(scope="module")
def qt():
    if not JIT.exists():
        pytest.skip(f"public benchmark data not available: {JIT} is missing")
    return load_project(JIT / "qt.csv")


def test_la_predict_reproduces_the_published_qt_auc(qt):
    from sklearn.metrics import roc_auc_score

    n = int(len(qt) * 0.8)
    auc = roc_auc_score(qt["bug"].iloc[n:], la_predict(qt.iloc[:n], qt.iloc[n:]))
    assert auc == pytest.approx(0.744, abs=0.01)


def test_benchmark_loader_drops_the_leaky_copy_of_the_label(qt):
    assert "__" not in qt.columns and "entropy" in qt.columns and "entrophy" not in qt.columns


@pytest.fixture(scope="module")
def fitted(qt):
    data = qt.iloc[:8000]
    model = RiskModel(["la", "ld", "lt", "nf", "ns", "nd", "entropy", "exp", "age", "nuc"], name="qt").fit(
        data, data["bug"], data["committed_at"]
    )
    return model, qt.iloc[8000:11000]


def test_calibration_lowers_the_brier_score(fitted):
    from sklearn.metrics import brier_score_loss

    model, test = fitted
    uncalibrated = 1 / (1 + np.exp(-model.raw_score(test)))  # class-balanced booster: overconfident
    assert brier_score_loss(test["bug"], model.predict_proba(test)) < brier_score_loss(
        test["bug"], uncalibrated
    )


def test_contributions_sum_to_the_raw_margin(fitted):
    model, test = fitted
    rows = test.head(50)
    contributions = model.contributions(rows)
    assert np.allclose(contributions.sum(axis=1), model.raw_score(rows), atol=1e-6)
    assert "la_per_lt" in contributions.columns and "bias" in contributions.columns
    assert model.importance()["gain"].iloc[0] > 0


def test_too_few_labels_is_a_clear_error(qt):
    few = qt.iloc[:80]
    with pytest.raises(TooFewLabels, match="need at least 100 rows"):
        RiskModel(["la"]).fit(few, few["bug"], few["committed_at"])


# --- the registry, on a demo world built through the whole pipeline -----------------------------------


@pytest.fixture(scope="module")
def pipeline(small_world, tmp_path_factory):
    from pipelines.flow import prepare

    root = tmp_path_factory.mktemp("models")
    settings = load_settings(data_dir=root, min_positive_labels=10)
    tables = root / "demo"
    prepare(small_world.repo, settings, tables, name="demo", delivery=small_world.repo.parent)
    return settings, tables


FAST = ModelConfig(n_estimators=300, learning_rate=0.05)


def test_immature_positives_are_left_out_like_the_immature_negatives():
    from models.training import immature_from, mature_labels

    days = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC")
    labels = [False, True, False, True, False, False, False, None, True, None]  # as `awo label` leaves them
    commits = pd.DataFrame({"committed_at": days, "bug_inducing": pd.array(labels, dtype="boolean")})
    # labelled with a 2.5-day window: days 7 and 9 are null, day 8 positive though just as young
    assert immature_from(commits) == days[7] and immature_from(commits, 2.5) == days[9] - pd.Timedelta("2.5D")
    assert list(mature_labels(commits)["committed_at"]) == list(days[:7])
    assert list(mature_labels(commits, 2.5)["committed_at"]) == list(days[:7])


def test_first_version_is_champion_and_loads_by_alias(pipeline):
    from features.store import online_features, open_store
    from models.registry import alias_version, load
    from pipelines.train import train

    settings, tables = pipeline
    result = train("change-risk", settings, tables, FAST)
    assert result.model_kind.startswith("within-project") and 0.5 < result.metrics["auc"] <= 1
    assert (
        alias_version("change-risk", "champion")
        == alias_version("change-risk", "challenger")
        == result.version
    )
    loaded = load("change-risk", "champion")
    assert loaded.feature_service == "change_risk_v1" and loaded.version == result.version
    commits = pd.read_parquet(tables / "commits.parquet").tail(5)
    rows = online_features(open_store(settings), "change_risk_v1",
                           [{"repo": "demo", "sha": s} for s in commits["sha"]]).rows  # fmt: skip
    frame = pd.DataFrame(rows).astype(float)
    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model("models:/change-risk@champion").predict(
        frame, params={"contributions": True}
    )
    assert np.allclose(served["probability"], loaded.model.predict_proba(frame))
    contributions = served.filter(like="contribution:")
    assert np.allclose(contributions.sum(axis=1), loaded.model.raw_score(frame), atol=1e-6)


def test_promotion_refuses_a_worse_challenger_and_accepts_a_good_one(pipeline):
    import mlflow

    from models.registry import alias_version, connect, experiment, log_model
    from models.training import held_out
    from pipelines.train import LOADERS, promote_model, train

    settings, tables = pipeline
    connect(settings)
    champion = (
        alias_version("change-risk", "champion") or train("change-risk", settings, tables, FAST).version
    )
    from features.store import open_store

    data = LOADERS["change-risk"](settings, tables, open_store(settings))
    fit_rows, test = held_out(data, 30)
    shuffled = fit_rows["label"].sample(frac=1, random_state=1).to_numpy()  # labels made meaningless
    bad = RiskModel(data.features, FAST, name="bad").fit(fit_rows, shuffled, fit_rows["at"])
    with mlflow.start_run(experiment_id=experiment(settings, "change-risk")):
        log_model(bad, "change-risk", data.service, test, {"model_kind": "deliberately worse"})
    refused = promote_model("change-risk", settings, tables)
    assert not refused["promoted"] and alias_version("change-risk", "champion") == champion
    assert refused["metrics"]["challenger"]["auc"] < refused["metrics"]["champion"]["auc"]
    good = train("change-risk", settings, tables, FAST)  # same data and seed: as good as the champion
    accepted = promote_model("change-risk", settings, tables)
    assert accepted["promoted"] and alias_version("change-risk", "champion") == good.version


def test_the_test_period_holds_no_immature_positives_and_is_not_enriched(pipeline):
    from features.store import open_store
    from models.training import held_out
    from pipelines.train import LOADERS

    settings, tables = pipeline
    commits = pd.read_parquet(tables / "commits.parquet")
    window_start = commits["committed_at"].max() - pd.Timedelta(days=180)  # `awo label`'s default maturity
    data = LOADERS["change-risk"](settings, tables, open_store(settings))
    fit_rows, test = held_out(data, 30)
    assert test["at"].max() <= window_start
    rates = f"positive rate: fitted on {fit_rows['label'].mean():.3f}, test {test['label'].mean():.3f}"
    assert test["label"].mean() <= 1.25 * fit_rows["label"].mean(), rates


def test_cold_start_uses_a_cross_project_model_and_says_so(pipeline, monkeypatch):
    if not JIT.exists():
        pytest.skip(f"public benchmark data not available: {JIT} is missing")
    from models.registry import load
    from pipelines.train import train

    settings, tables = pipeline
    strict = settings.model_copy(update={"min_positive_labels": 10_000})
    result = train("change-risk", strict, tables, FAST)
    assert result.model_kind.startswith("cross-project") and result.notes
    assert load("change-risk", "challenger").meta["model_kind"].startswith("cross-project")


def test_empty_registry_and_unknown_models_are_clear_errors(tmp_path):
    from models.registry import RegistryError, connect, load

    connect(load_settings(data_dir=tmp_path))
    with pytest.raises(RegistryError, match=r"no champion of model 'change-risk'.*awo train change-risk"):
        load("change-risk")


def test_deploy_failure_model_is_trained_on_delivery_history(pipeline):
    from pipelines.train import train

    settings, tables = pipeline
    result = train("deploy-failure", settings, tables, FAST)
    assert "delivery history" in result.model_kind and result.metrics["auc"] > 0.6


def test_mlflow_ui_serves_the_runs_of_the_store(pipeline):
    import os

    import mlflow

    from models.registry import connect, experiment

    settings, _ = pipeline
    connect(settings)
    with mlflow.start_run(experiment_id=experiment(settings, "change-risk"), run_name="ui-check"):
        mlflow.log_metric("test_auc", 0.7)
    port = free_port()
    env = {**os.environ, "AWO_DATA_DIR": str(settings.data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "mlflow-ui", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        body = ""
        for _ in range(120):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                    data=b'{"max_results": 50}', headers={"Content-Type": "application/json"},
                )  # fmt: skip
                body = urllib.request.urlopen(request, timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "<html" in page.lower() or "mlflow" in page.lower()
        assert "change-risk" in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_benchmark_command_prints_models_baselines_and_published_numbers(tmp_path, qt):
    from pipelines.cli import app

    folder = tmp_path / "jit"
    folder.mkdir()
    raw = pd.read_csv(JIT / "qt.csv").iloc[:4000]
    raw.to_csv(folder / "qt.csv", index=False)
    result = CliRunner().invoke(app, ["benchmark", "jit", "--dataset", str(folder), "--out",
                                      str(tmp_path / "jit.json"), "--no-track"])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_json(tmp_path / "jit.json")
    assert set(table["model"]) == {"awo (LightGBM)", "LApredict", "LR (14 metrics)", "LightGBM (untuned)"}
    rows = table[table["project"] == "qt"].set_index("model")
    assert rows.loc["LApredict", "published_auc"] == pytest.approx(0.744)  # the paper's qt figure, by name
    # LApredict is monotone in la, so its AUC is la's AUC on the test rows (the last 20% in time order).
    from sklearn.metrics import roc_auc_score

    from models.jit_benchmark import load_project

    data = load_project(folder / "qt.csv")
    test = data.iloc[int(len(data) * 0.8) :]
    assert rows.loc["LApredict", "auc"] == pytest.approx(roc_auc_score(test["bug"], test["la"]), abs=1e-9)
    mean = table[table["project"] == "mean"].set_index("model")
    assert mean.loc["awo (LightGBM)", "auc"] == pytest.approx(rows.loc["awo (LightGBM)", "auc"])
    assert {"auc", "f1", "recall@20%effort", "effort@20%recall", "popt"} <= set(table.columns)
