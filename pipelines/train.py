"""`awo train change-risk|deploy-failure`, `awo promote`, `awo benchmark jit`: the training jobs.

Training sets come from the Feast store by the model's feature service; evaluation is time-ordered with a
gap for label maturity (train on the past, skip the gap, test on the newest 20%), plus a rolling
evaluation that shows how a model ages. A repository with too few mature positive labels gets a
cross-project model trained on the public benchmark data on the 14 Kamei metrics both share (cold start),
and its registry entry says so."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.errors import AwoError
from features.history import ADDED_WHERE
from features.settings import Settings
from features.tables import CODE_COLUMNS, COMMITS_FILE, DEPLOYMENTS_FILE, read_table
from models.evaluation import classification_metrics, reference
from models.risk_model import BoosterTrainer, ModelConfig, RiskModel, TooFewLabels
from models.training import (
    TrainingData,
    cross_project_model,
    held_out,
    immature_from,
    mature_labels,
    risk_model,
    rolling_evaluation,
)

if TYPE_CHECKING:
    from models.distributed import WorkerPlace


@dataclass
class TrainResult:
    kind: str
    version: str
    model_kind: str
    metrics: dict[str, float]
    rolling: pd.DataFrame
    rows: dict[str, int]
    run_id: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def change_risk_data(
    settings: Settings,
    data_dir: Path,
    store,
    maturity_days: float | None = None,
    service: str | None = None,
) -> TrainingData:
    """Mature, labelled commits with their point-in-time features from `service` (default: the
    `change_risk_features` setting). `maturity_days`: the label maturity window `awo label` used; by default
    read off the labels themselves (see models.training.mature_labels)."""
    commits = read_table(data_dir / "commits.parquet")
    if commits is None:
        raise AwoError(f"no mined commits in {data_dir}: run `awo mine` and `awo label` first")
    if "bug_inducing" not in commits.columns:
        raise AwoError(
            f"{data_dir / 'commits.parquet'} has no labels: run `awo label REPO --data {data_dir}`"
        )
    service = service or settings.change_risk_features
    return _change_risk_training_data(
        store,
        mature_labels(commits, maturity_days),
        service,
        "mined, SZZ-labelled commits",
        immature_from(commits, maturity_days),
    )


def _change_risk_training_data(
    store, mature: pd.DataFrame, service: str, source: str, mature_before: pd.Timestamp | None
) -> TrainingData:
    """Point-in-time features of the `mature` labelled commits (of one repository or many: the Feast
    sources hold every built repository's rows) from `service`, with label, time and effort."""
    from features.store import feature_names, training_set

    entities = mature[["repo", "sha", "committed_at"]].rename(columns={"committed_at": "event_timestamp"})
    frame = training_set(store, entities, service)
    frame = frame.merge(mature[["repo", "sha", "bug_inducing", "committed_at"]], on=["repo", "sha"])
    frame = frame.assign(label=frame["bug_inducing"].astype(bool).astype(int), at=frame["committed_at"])
    frame["effort"] = frame["la"] + frame["ld"]
    return TrainingData(
        "change-risk",
        service,
        [f for f in feature_names(store, service) if f != ADDED_WHERE],  # where lines are: not an input
        frame.sort_values("at", kind="stable").reset_index(drop=True),
        source,
        mature_before,
    )


def labelled_repositories(data_root: Path) -> list[Path]:
    """The data directories under `data_root` that hold labelled commits (`<repo>/commits.parquet` with a
    `bug_inducing` column), by name."""
    import pyarrow.parquet as pq

    found = []
    for table in sorted(Path(data_root).glob(f"*/{COMMITS_FILE}")):
        if "bug_inducing" in pq.read_schema(table).names:
            found.append(table.parent)
    return found


def org_change_risk_data(
    settings: Settings, store, maturity_days: float | None = None, service: str | None = None
) -> tuple[TrainingData, list[str]]:
    """The organisation's training data: the mature labels of every labelled repository under the data
    root, each repository's maturity window its own, in one time-ordered frame; and the repository names."""
    directories = labelled_repositories(settings.data_dir)
    if not directories:
        raise AwoError(
            f"no labelled repositories under {settings.data_dir}: run `awo mine` and `awo label` on the "
            "organisation's repositories first"
        )
    mature, names, windows = [], [], []
    for directory in directories:
        commits = read_table(directory / COMMITS_FILE)
        assert commits is not None  # found by labelled_repositories
        repo = str(commits["repo"].iloc[0])
        if repo in names:
            raise AwoError(
                f"{directory / COMMITS_FILE}: repository name {repo!r} is mined twice under the data root"
            )
        names.append(repo)
        mature.append(mature_labels(commits, maturity_days))
        windows.append(immature_from(commits, maturity_days))
    starts = [w for w in windows if w is not None]
    data = _change_risk_training_data(
        store,
        pd.concat(mature, ignore_index=True),
        service or settings.change_risk_features,
        f"mined, SZZ-labelled commits of {len(names)} repositories",
        min(starts) if starts else None,
    )
    return data, names


def deploy_failure_data(settings: Settings, data_dir: Path, store) -> TrainingData:
    from features.store import feature_names, training_set

    deployments = read_table(data_dir / DEPLOYMENTS_FILE)
    if deployments is None:
        raise AwoError(
            f"no deployments in {data_dir}: run `awo ingest deployments FILE --data {data_dir}` first"
        )
    entities = deployments[["deploy_id", "started_at"]].rename(columns={"started_at": "event_timestamp"})
    frame = training_set(store, entities, "deploy_failure_v1")
    frame = frame.merge(deployments[["deploy_id", "failed", "started_at"]], on="deploy_id")
    frame = frame.assign(label=frame["failed"].astype(int), at=frame["started_at"])
    frame["effort"] = (frame["la_sum"] + frame["ld_sum"]).fillna(0)
    return TrainingData(
        "deploy-failure",
        "deploy_failure_v1",
        feature_names(store, "deploy_failure_v1"),
        frame.sort_values("at", kind="stable").reset_index(drop=True),
        "the team's ingested delivery history (no public dataset exists)",
    )


LOADERS = {"change-risk": change_risk_data, "deploy-failure": deploy_failure_data}


def training_data(
    kind: str,
    settings: Settings,
    data_dir: Path,
    store,
    maturity_days: float | None = None,
    service: str | None = None,
) -> TrainingData:
    """The training data of `kind`; label maturity and a choice of feature service apply to change-risk
    only (a deployment's failure is known within the incident window, hours after it)."""
    if kind not in LOADERS:
        raise AwoError(f"unknown model {kind!r}; one of {', '.join(LOADERS)}")
    if kind == "change-risk":
        return change_risk_data(settings, data_dir, store, maturity_days, service)
    return LOADERS[kind](settings, data_dir, store)


def train(
    kind: str,
    settings: Settings,
    data_dir: Path,
    config: ModelConfig | None = None,
    gap_days: float = 30.0,
    maturity_days: float | None = None,
) -> TrainResult:
    from features.store import open_store

    started = time.perf_counter()
    data = training_data(kind, settings, data_dir, open_store(settings), maturity_days)
    return _train_and_register(kind, settings, data, config, gap_days, started)


def train_org(
    settings: Settings,
    config: ModelConfig | None = None,
    gap_days: float = 30.0,
    maturity_days: float | None = None,
    *,
    ray: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    on_start: Callable[[list[WorkerPlace]], None] | None = None,
) -> TrainResult:
    """The organisation-wide change-risk model: trained on the mature labels of every repository under the
    data root, evaluated on their newest period (models.training.held_out on the merged, time-ordered rows).

    With `ray`, LightGBM fits data-parallel across `workers` (default: the `train_workers` setting) Ray
    actors on the cluster at `ray_address` (default: the `ray_address` setting, else a single-machine
    cluster started here); `on_start` hears where the workers run. The rolling evaluation stays local."""
    from features.store import open_store

    started = time.perf_counter()
    data, repositories = org_change_risk_data(settings, open_store(settings), maturity_days)
    params: dict[str, Any] = {"trainer": "ray" if ray else "local", "repositories": len(repositories)}
    if not ray:
        return _train_and_register("change-risk", settings, data, config, gap_days, started, None, params)
    from features.cluster import LOCAL, connect, ray_module
    from models.distributed import RayTrainer

    count = workers or settings.train_workers
    connected_before = ray_module().is_initialized()
    cluster = connect(ray_address or settings.ray_address or LOCAL)
    try:
        with RayTrainer(count, on_start=on_start) as trainer:
            return _train_and_register(
                "change-risk",
                settings,
                data,
                config,
                gap_days,
                started,
                trainer,
                {**params, "workers": count},
            )
    finally:
        if not connected_before:  # a driver this call connected; a caller's connection stays
            cluster.shutdown()


def _train_and_register(
    kind: str,
    settings: Settings,
    data: TrainingData,
    config: ModelConfig | None,
    gap_days: float,
    started: float,
    trainer: BoosterTrainer | None = None,
    params: dict[str, Any] | None = None,
) -> TrainResult:
    """Fit on all but the held-out period, evaluate on it, log the run to MLflow, register the model as
    challenger. `trainer` fits the within-project boosters; `params` are logged beside the model's."""
    import mlflow

    from models.plots import save_evaluation_plots
    from models.registry import connect, experiment, log_model

    fit_rows, test = held_out(data, gap_days)
    notes: list[str] = []
    service = data.service
    model_kind = f"within-project ({data.source})"
    positives = int(fit_rows["label"].sum())
    try:
        if kind == "change-risk" and positives < settings.min_positive_labels:
            raise TooFewLabels(f"{positives} mature positive labels (< {settings.min_positive_labels})")
        model, service = _within_project(data, fit_rows, config, notes, trainer)
    except TooFewLabels as exc:
        if kind != "change-risk":
            raise AwoError(f"cannot train {kind}: {exc}") from None
        model = cross_project_model(settings.public_jit_dir, config)
        model_kind = "cross-project (ISSTA'21 public JIT data, 14 Kamei metrics)"
        notes.append(f"cold start: {exc}; using a cross-project model trained on public data")
    metrics = classification_metrics(
        test["label"], model.predict_proba(test), test["effort"], model.threshold_
    )
    # Reference distributions of the score and the top features, for the API's drift report.
    reference_rows = fit_rows if model_kind.startswith("within") else test
    booster_model = getattr(model, "risk_", model)  # a code model's metrics model holds the booster
    top = [f for f in booster_model.importance()["feature"] if f in model.features][:5]
    drift_reference = {
        "probability": reference(model.predict_proba(reference_rows)),
        "features": {f: reference(reference_rows[f].to_numpy(dtype=float)) for f in top},
    }
    rolling = (
        rolling_evaluation(data, model.features, config, gap_days)
        if model_kind.startswith("within")
        else pd.DataFrame()
    )
    connect(settings)
    experiment_id = experiment(settings, kind)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{kind} {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}"
    ) as run:
        mlflow.log_params(
            {
                **_flat(model.config.model_dump()),
                "gap_days": gap_days,
                "feature_service": service,
                "model_kind": model_kind,
                **{f"rows_{k}": v for k, v in model.trained_rows_.items()},
                "rows_test": len(test),
                "test_from": str(test["at"].min()),
                "labels_mature_before": str(data.mature_before),
                **(params or {}),
            }
        )
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        for step, row in enumerate(rolling.itertuples()):
            mlflow.log_metrics({"rolling_auc": row.auc, "rolling_popt": row.popt}, step=step)
        mlflow.set_tags({"training_data": data.source, "model_kind": model_kind})
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            save_evaluation_plots(test["label"], model.predict_proba(test), test["effort"], directory, kind)
            (directory / "features.json").write_text(
                json.dumps({"feature_service": service, "features": model.features}, indent=2)
            )
            booster_model.importance().to_csv(directory / "importance.csv", index=False)
            if len(rolling):
                rolling.to_csv(directory / "rolling_evaluation.csv", index=False)
            mlflow.log_artifacts(str(directory), artifact_path="evaluation")
        version = log_model(
            model,
            kind,
            service,
            test,
            {
                "model_kind": model_kind,
                "test_metrics": metrics,
                "reference": drift_reference,
                "test_from": str(test["at"].min()),
            },
        )
    return TrainResult(
        kind,
        version,
        model_kind,
        metrics,
        rolling,
        {**model.trained_rows_, "test": len(test)},
        run.info.run_id,
        time.perf_counter() - started,
        notes,
    )


def _within_project(
    data: TrainingData,
    fit_rows: pd.DataFrame,
    config: ModelConfig | None,
    notes: list[str],
    trainer: BoosterTrainer | None = None,
) -> tuple[Any, str]:
    """The within-project model and the feature service it reads: the code-reading model when the data
    has the code, falling back to the metrics alone (change_risk_v1) when it has too few labels for the
    code model's slices. Raises TooFewLabels when even the metrics model cannot be trained.

    With a `trainer` (a distributed one), the metrics model alone: the code model's text half fits in one
    process and is not distributed."""

    def fit(features: list[str]):
        return risk_model(features, config, name=data.kind).fit(fit_rows, fit_rows["label"], fit_rows["at"])

    metrics = [f for f in data.features if f not in CODE_COLUMNS]
    if trainer is not None:
        if metrics != data.features:
            notes.append(
                f"{data.service} reads the code, which the distributed trainer does not: change_risk_v1"
            )
        model = RiskModel(metrics, config, name=data.kind)
        return model.fit(fit_rows, fit_rows["label"], fit_rows["at"], trainer), "change_risk_v1"
    try:
        return fit(data.features), data.service
    except TooFewLabels as exc:
        if metrics == data.features:
            raise
        notes.append(f"the code-reading model was not trained ({exc}): the metrics alone (change_risk_v1)")
        return fit(metrics), "change_risk_v1"


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as flat MLflow parameters (`metrics.num_leaves`)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def promote_model(
    kind: str,
    settings: Settings,
    data_dir: Path | None,
    gap_days: float = 30.0,
    maturity_days: float | None = None,
) -> dict[str, Any]:
    """The promotion gate: champion and challenger scored on the same, most recent held-out period of
    mature labels — of one repository (`data_dir`), or of the organisation (None: every labelled
    repository under the data root, as `train_org` holds out)."""
    from features.store import open_store
    from models.registry import connect, promote

    # change_risk_v2 holds every column of v1: champion and challenger are scored on the same rows
    # whichever service each was trained on.
    service = "change_risk_v2" if kind == "change-risk" else None
    if data_dir is None:
        if kind != "change-risk":
            raise AwoError(f"the organisation-wide model is change-risk; {kind} is promoted per repository")
        data, _ = org_change_risk_data(settings, open_store(settings), maturity_days, service)
    else:
        data = training_data(kind, settings, data_dir, open_store(settings), maturity_days, service)
    connect(settings)
    _, test = held_out(data, gap_days)

    def score(loaded) -> dict[str, float]:
        return classification_metrics(
            test["label"], loaded.model.predict_proba(test), test["effort"], loaded.model.threshold_
        )

    result = promote(kind, score)
    result["test_rows"] = len(test)
    return result
