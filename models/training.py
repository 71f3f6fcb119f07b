"""Model training as domain logic, apart from where the data comes from: the training data of a model
kind, which labels are mature enough to learn and evaluate on, the held-out split used by training and the
promotion gate alike, the rolling evaluation that shows how a model ages, and the cross-project model for
cold start (trained on public JIT data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.change_metrics import KAMEI_METRICS
from features.errors import AwoError
from features.tables import CODE_COLUMNS
from models.evaluation import classification_metrics, rolling_windows, time_split
from models.risk_model import ModelConfig, RiskModel, TooFewLabels


@dataclass
class TrainingData:
    kind: str
    service: str
    features: list[str]
    frame: pd.DataFrame  # features, `label`, `at`, `effort`; sorted by `at`
    source: str
    mature_before: pd.Timestamp | None = None  # rows from here on were left out as immature labels


def immature_from(commits: pd.DataFrame, maturity_days: float | None = None) -> pd.Timestamp | None:
    """When the labels of `commits` (`committed_at`, `bug_inducing`) stop being mature, or None.

    With `maturity_days`: the labelling rule itself (features.labels.label_commits), the newest commit minus
    the window. Without: the first commit the labeller left null. It nulls every commit younger than its
    window that no fix has blamed yet, so this is where that window began, whatever `--maturity-days` the
    labels were made with (up to the few positives that may precede the first null)."""
    if maturity_days is not None:
        return commits["committed_at"].max() - pd.Timedelta(days=maturity_days)
    unknown = commits.loc[commits["bug_inducing"].isna(), "committed_at"]
    return unknown.min() if len(unknown) else None


def mature_labels(commits: pd.DataFrame, maturity_days: float | None = None) -> pd.DataFrame:
    """The commits whose label can be trusted both ways: labelled and older than the maturity window.

    Inside the window the labeller keeps positives (a fix already blamed them) but nulls negatives (no fix
    yet is no evidence), so the young commits that keep a label are all positive. Kept, they would sit in
    the newest period, the test period, and enrich it with positives (demo world: 0.126 positive among the
    rows fitted on, 0.217 among the test rows). Training, evaluation and the promotion gate therefore stop
    where the labels stop being mature."""
    start = immature_from(commits, maturity_days)
    labelled = commits["bug_inducing"].notna()
    if start is None:
        return commits[labelled]
    if maturity_days is None:
        return commits[labelled & (commits["committed_at"] < start)]
    return commits[labelled & (commits["committed_at"] <= start)]  # label_commits: immature is > start


def held_out(data: TrainingData, gap_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to fit on, test rows): the newest 20% test, with a maturity gap before it."""
    split = time_split(data.frame["at"], test_share=0.2, gap=pd.Timedelta(days=gap_days))
    fit_rows = np.sort(np.concatenate([split.train, split.validation, split.calibration]))
    return data.frame.iloc[fit_rows], data.frame.iloc[split.test]


def risk_model(features: list[str], config: ModelConfig | None = None, name: str = "risk"):
    """The model for a feature list: a RiskModel on metrics, or a CodeRiskModel (the metrics model plus a
    text model of the diff) when the list holds the code columns of a feature service like change_risk_v2."""
    if not any(f in CODE_COLUMNS for f in features):
        return RiskModel(features, config, name=name)
    from models.code_model import CodeModelConfig, CodeRiskModel

    metrics = [f for f in features if f not in CODE_COLUMNS]
    return CodeRiskModel(metrics, CodeModelConfig(metrics=config or ModelConfig()), name=name)


def rolling_evaluation(
    data: TrainingData, features: list[str], config: ModelConfig | None, gap_days: float
) -> pd.DataFrame:
    """Train on a window, skip the gap, test on the next window, slide: how the model ages."""
    span = data.frame["at"].max() - data.frame["at"].min()
    window, test = span * 0.4, span * 0.15
    rows = []
    for start, train_rows, test_rows in rolling_windows(
        data.frame["at"], window, pd.Timedelta(days=gap_days), test
    ):
        train, held = data.frame.iloc[train_rows], data.frame.iloc[test_rows]
        if held["label"].nunique() < 2:
            continue
        try:
            model = risk_model(features, config).fit(train, train["label"], train["at"])
        except TooFewLabels:
            continue
        m = classification_metrics(held["label"], model.predict_proba(held), held["effort"], model.threshold_)
        rows.append(
            {
                "test_from": start,
                "train_rows": len(train),
                "test_rows": len(held),
                "auc": m["auc"],
                "brier": m["brier"],
                "popt": m["popt"],
            }
        )
    return pd.DataFrame(rows)


def cross_project_model(dataset: Path, config: ModelConfig | None = None) -> RiskModel:
    """A change-risk model trained on the public benchmark projects, on the 14 Kamei metrics."""
    from models.jit_benchmark import load_project

    files = sorted(Path(dataset).glob("*.csv"))
    if not files:
        raise AwoError(f"cold start needs the public JIT data in {dataset}, which is missing")
    frames = [load_project(f) for f in files]
    data = pd.concat(frames, ignore_index=True).sort_values("committed_at", kind="stable")
    return RiskModel(list(KAMEI_METRICS), config, name="change-risk-cross-project").fit(
        data, data["bug"], data["committed_at"]
    )
