"""The public just-in-time defect prediction benchmark (ISSTA'21 data of Zeng et al.): for each project,
the first 80% of rows (in time order) train, the last 20% test; tuning and early stopping only on a
validation slice cut from the end of the training rows. Our model beside three baselines computed in the
same run — LApredict (logistic regression on log(1 + la)), logistic regression on the 14 metrics, and an
untuned LightGBM (library defaults) fitted on the whole training slice — and the published numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.change_metrics import KAMEI_METRICS
from features.errors import AwoError, BadTable
from features.settings import Settings
from models.evaluation import classification_metrics
from models.risk_model import ModelConfig, RiskModel

# The benchmark's column names onto our feature names, in one place (its `entrophy` is our `entropy`).
BENCHMARK_COLUMNS = {**{m: m for m in KAMEI_METRICS}, "entrophy": "entropy"}
BENCHMARK_COLUMNS.pop("entropy")
LABEL = "bug"

# Published test AUC (Zeng et al., ISSTA 2021; ../shared/data/README.md).
PROJECTS = ("qt", "openstack", "jdt", "platform", "gerrit", "go")
PUBLISHED_AUC = {
    name: dict(zip(PROJECTS, values, strict=True))
    for name, values in {
        "DeepJIT": (0.693, 0.713, 0.670, 0.771, 0.703, 0.689),
        "CC2Vec": (0.694, 0.723, 0.665, 0.761, 0.699, 0.692),
        "LR (published)": (0.665, 0.725, 0.674, 0.640, 0.657, 0.675),
        "LApredict (published)": (0.744, 0.749, 0.676, 0.746, 0.750, 0.683),
    }.items()
}


@dataclass
class ProjectResult:
    project: str
    rows: int
    test_rows: int
    metrics: dict[str, dict[str, float]]  # model → metric → value


def load_project(path: Path) -> pd.DataFrame:
    """One benchmark CSV with our feature names, the label and the commit time; leaky columns dropped."""
    frame = pd.read_csv(path)
    missing = [c for c in [*BENCHMARK_COLUMNS, LABEL, "date"] if c not in frame.columns]
    if missing:
        raise BadTable(f"{path}: missing columns {missing} (expected the ISSTA'21 JIT schema)")
    out = frame[list(BENCHMARK_COLUMNS)].rename(columns=BENCHMARK_COLUMNS).astype(float)
    out["fix"] = out["fix"].astype(float)
    out["bug"] = frame[LABEL].astype(int).to_numpy()
    out["committed_at"] = pd.to_datetime(frame["date"], unit="s", utc=True)
    return out  # rows stay in file order, which is time order in this data


def la_predict(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000).fit(np.log1p(train[["la"]]), train["bug"])
    return model.predict_proba(np.log1p(test[["la"]]))[:, 1]


def logistic_14(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(train[list(KAMEI_METRICS)], train["bug"])
    return model.predict_proba(test[list(KAMEI_METRICS)])[:, 1]


def untuned_lightgbm(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """LightGBM with library defaults on all training rows: what our tuning and calibration must beat."""
    from lightgbm import LGBMClassifier

    model = LGBMClassifier(verbose=-1, random_state=0)
    model.fit(train[list(KAMEI_METRICS)], train["bug"])
    return np.asarray(model.predict_proba(test[list(KAMEI_METRICS)]))[:, 1]


def run_project(path: Path, config: ModelConfig | None = None) -> tuple[ProjectResult, RiskModel]:
    data = load_project(path)
    n_train = int(len(data) * 0.8)
    train, test = data.iloc[:n_train], data.iloc[n_train:]
    model = RiskModel(list(KAMEI_METRICS), config, name=f"jit-{path.stem}").fit(
        train, train["bug"], train["committed_at"]
    )
    effort = (test["la"] + test["ld"]).to_numpy()
    scores = {
        "awo (LightGBM)": model.predict_proba(test),
        "LApredict": la_predict(train, test),
        "LR (14 metrics)": logistic_14(train, test),
        "LightGBM (untuned)": untuned_lightgbm(train, test),
    }
    metrics = {
        name: classification_metrics(
            test["bug"], p, effort, threshold=model.threshold_ if name.startswith("awo") else 0.5
        )
        for name, p in scores.items()
    }
    return ProjectResult(path.stem, len(data), len(test), metrics), model


def benchmark_table(dataset: Path, settings: Settings | None, out: Path | None = None) -> pd.DataFrame:
    """The benchmark table: per project and model, AUC, F1, Recall@20%Effort, Effort@20%Recall, Popt and
    the published AUC; one MLflow run per project when `settings` is given."""
    files = sorted(Path(dataset).glob("*.csv"))
    if not files:
        raise AwoError(f"no CSV files in {dataset}")
    rows = []
    if settings is not None:
        import mlflow

        from models.registry import connect, experiment

        connect(settings)
        experiment_id = experiment(settings, "jit-benchmark")
    for path in files:
        result, model = run_project(path)
        for name, m in result.metrics.items():
            published = PUBLISHED_AUC.get(
                "LApredict (published)"
                if name == "LApredict"
                else "LR (published)"
                if name.startswith("LR")
                else "",
                {},
            ).get(result.project)
            rows.append(
                {
                    "project": result.project,
                    "model": name,
                    "auc": m["auc"],
                    "f1": m["f1"],
                    "recall@20%effort": m["recall_at_20_effort"],
                    "effort@20%recall": m["effort_at_20_recall"],
                    "popt": m["popt"],
                    "published_auc": published if published is not None else float("nan"),
                }
            )
        if settings is not None:
            with mlflow.start_run(experiment_id=experiment_id, run_name=result.project):
                mlflow.log_params(
                    {**model.config.model_dump(), "rows": result.rows, "test_rows": result.test_rows}
                )
                for name, m in result.metrics.items():
                    key = name.split(" ")[0].lower()
                    mlflow.log_metrics({f"{key}_{k}": v for k, v in m.items() if np.isfinite(v)})
    table = pd.DataFrame(rows)
    means = table.groupby("model", sort=False)[
        ["auc", "f1", "recall@20%effort", "effort@20%recall", "popt"]
    ].mean()
    means = means.reset_index().assign(project="mean", published_auc=float("nan"))
    table = pd.concat([table, means[table.columns]], ignore_index=True)
    if out is not None:
        out.write_text(table.to_json(orient="records", indent=2))
    return table
