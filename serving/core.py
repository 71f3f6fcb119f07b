"""The scoring core: commits (by sha from the online store, or by raw metrics), a deployment, and a change
that is not mined yet, scored in process and answered as plain dataclasses. No FastAPI and no response
models here: the HTTP routes convert (serving.scoring), the agents call these functions directly.

A deployment is scored on the vector training saw: every feature comes from the function the feature
build uses (features.history.deployment_features), fed the same inputs — the shipped commits' change
features from the online store and their authors from the mined commits table, the previous deployment
of the service and environment and the service's health as of the query time from the delivery tables."""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from features.history import (
    CHANGE_RISK_V1,
    SERVICE_HEALTH_FEATURES,
    SHIPPED_COMMIT_FEATURES,
    ServiceTimeline,
    deployment_features,
    known_failure_times,
)
from features.settings import Settings
from features.tables import COMMITS_FILE, DEPLOYMENTS_FILE, INCIDENTS_FILE, as_utc, file_key, read_table
from models.registry import LoadedModel
from serving.compiled import PlainScorer, Scorer

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.mining.diff import UnminedChange

TOP_DRIVERS = 5
STALENESS_CACHE_SECONDS = 60.0
Band = Literal["low", "medium", "high", "critical"]


@dataclass(frozen=True)
class Driver:
    """A feature that drove a score: its input value (None when missing) and log-odds contribution."""

    feature: str
    value: float | None
    contribution: float


@dataclass(frozen=True)
class LineDriver:
    """An added line that drives a code-reading model's risk: where it is (`path:line`, None when the
    caller gave lines without places), its text and its share of the text model's log-odds."""

    where: str | None
    line: str
    score: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    kind: str | None


class CommitInput(Protocol):
    """A commit to score: by `sha` of a mined repository, or by raw `metrics` (feature name → value)."""

    @property
    def repo(self) -> str: ...
    @property
    def sha(self) -> str | None: ...
    @property
    def metrics(self) -> Mapping[str, float] | None: ...


@dataclass(frozen=True)
class CommitRef:
    """The plain CommitInput, for in-process callers: exactly one of `sha` and `metrics`; `code` (the
    change_risk_v2 code columns: added_lines, removed_lines, message, added_where) beside metrics, for a
    code-reading model."""

    repo: str
    sha: str | None = None
    metrics: Mapping[str, float] | None = None
    code: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if problem := _sha_or_metrics(self):
            raise ValueError(f"commit of {self.repo}: {problem}")


def _sha_or_metrics(commit: CommitInput) -> str | None:
    """Why `commit` is not scorable as one item (None when it is): the HTTP schema's rule, kept here so
    every caller of score_commits gets one result per input."""
    if commit.sha is None and commit.metrics is None:
        return "give a sha or metrics, got neither"
    if commit.sha is not None and commit.metrics is not None:
        return "give a sha or metrics, not both"
    return None


@dataclass
class CommitScore:
    repo: str
    sha: str | None
    probability: float  # calibrated
    band: Band
    model: ModelInfo
    raw_score: float  # log-odds before calibration
    base_value: float  # log-odds of an average commit (the bias)
    drivers: list[Driver]  # with every feature: base_value + Σ contribution = raw_score
    features: dict[str, float | None]  # the model's input, by feature name (None: missing)
    warnings: list[str] = field(default_factory=list)
    lines: list[LineDriver] = field(default_factory=list)  # code-reading models: the riskiest added lines


@dataclass
class CommitNotFound:
    """A commit asked for by sha that the online store does not hold."""

    repo: str
    sha: str
    code: str = "unknown_commit"
    status: int = 404
    message: str = ""


@dataclass(frozen=True)
class DeploymentPlan:
    """A deployment to score: what it ships, where, how, and when it starts (None: now)."""

    repo: str
    service: str
    environment: str
    commits: Sequence[str]
    strategy: str | None = None
    started_at: datetime | None = None


@dataclass
class DeploymentVector:
    """The deployment features of a plan (NaN: unknown), the service's health among them, and notes."""

    features: dict[str, float]
    health: dict[str, float | None]
    warnings: list[str] = field(default_factory=list)


@dataclass
class DeploymentScore:
    service: str
    environment: str
    probability: float
    band: Band
    model: ModelInfo
    drivers: list[Driver]
    health: dict[str, float | None]
    features: dict[str, float | None]
    warnings: list[str] = field(default_factory=list)


@dataclass
class UnminedChangeScore:
    change: UnminedChange
    score: CommitScore


def band(probability: float, bands: Mapping[Any, float]) -> Band:
    levels: tuple[Band, ...] = ("critical", "high", "medium")
    for name in levels:
        if probability >= bands[name]:
            return name
    return "low"


def model_info(loaded: LoadedModel) -> ModelInfo:
    return ModelInfo(name=loaded.name, version=loaded.version, kind=loaded.meta.get("model_kind"))


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class Staleness:
    """Stale-store warnings, checked at most once a minute (the check reads the source tables)."""

    def __init__(self) -> None:
        self._at = 0.0
        self._warnings: list[str] = []

    def warnings(self, store: FeatureStore, settings: Settings, service_name: str) -> list[str]:
        from features.store import feature_service, staleness

        if time.monotonic() - self._at > STALENESS_CACHE_SECONDS:
            self._warnings = staleness(store, settings, feature_service(store, service_name))
            self._at = time.monotonic()
        return self._warnings


def _explained(
    loaded: LoadedModel, matrix: np.ndarray, top: int, scorer: Scorer | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[Driver]]]:
    """Raw scores, calibrated probabilities, biases and top drivers of the rows of `matrix` (columns: the
    model's features in order), by `scorer` (default: the model's own methods). The same answers as
    RiskModel.explain: per row, the `top` columns by absolute contribution, stable order on ties."""
    scored = (scorer or PlainScorer(loaded.model)).score(matrix)
    contributions = scored.contributions[:, :-1]
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :top]
    # one NumPy gather and one tolist per table for every row at once, instead of a float() per cell
    rows = np.arange(len(order))[:, None]
    values = _plain(scored.design[rows, order])
    shares = contributions[rows, order].tolist()
    columns = loaded.model.columns_
    drivers = [
        list(map(Driver, [columns[j] for j in row], row_values, row_shares))
        for row, row_values, row_shares in zip(order.tolist(), values, shares, strict=True)
    ]
    return scored.raw, scored.probability, scored.contributions[:, -1], drivers


def is_code_model(model: Any) -> bool:
    """Whether `model` reads the code of a change (models.code_model.CodeRiskModel) besides its metrics."""
    return hasattr(model, "explain_lines")


def _explained_code(
    model: Any, matrix: np.ndarray, codes: list[Mapping[str, Any] | None], top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[Driver]], list[list[LineDriver]]]:
    """`_explained` for a code-reading model, through its own methods on a frame of the metrics and the
    code columns (a row without code is scored as an empty diff); plus each row's top added lines."""
    frame = pd.DataFrame(matrix, columns=model.features)
    frame["added_lines"] = [_strings(c, "added_lines") for c in codes]
    frame["removed_lines"] = [_strings(c, "removed_lines") for c in codes]
    frame["message"] = [str((c or {}).get("message") or "") for c in codes]
    frame["added_where"] = [_strings(c, "added_where") for c in codes]  # path words, when trained on them
    raw = np.asarray(model.raw_score(frame), dtype=float)
    probability = np.asarray(model.predict_proba(frame), dtype=float)
    explanation = model.explain(frame, top)
    drivers = [
        [Driver(feature, _finite(value), float(contribution)) for feature, value, contribution in row]
        for row in explanation.drivers
    ]
    lines = []
    for code, row in zip(codes, model.explain_lines(frame, top), strict=True):
        where = _strings(code, "added_where")
        lines.append(
            [LineDriver(where[d.index] if d.index < len(where) else None, d.line, d.score) for d in row]
        )
    return raw, probability, np.asarray(explanation.bias, dtype=float), drivers, lines


def _strings(code: Mapping[str, Any] | None, column: str) -> list[str]:
    value = (code or {}).get(column)
    return [] if value is None else [str(x) for x in value]


def _plain(matrix: np.ndarray) -> list[list[float | None]]:
    """The rows of `matrix` as Python floats, None where a value is not finite (as `_finite`): one tolist,
    then the few non-finite cells replaced (an object array of every cell costs more than the scoring)."""
    cells: list[list[float | None]] = matrix.tolist()
    rows, columns = np.nonzero(~np.isfinite(matrix))
    for i, j in zip(rows.tolist(), columns.tolist(), strict=True):
        cells[i][j] = None
    return cells


def bands(probabilities: np.ndarray, thresholds: Mapping[Any, float]) -> list[Band]:
    """`band` of each probability, in one NumPy pass."""
    p = np.asarray(probabilities, dtype=float)
    levels = ("critical", "high", "medium")
    chosen = np.select([p >= thresholds[name] for name in levels], levels, default="low")
    return chosen.tolist()


def score_commits(
    commits: Sequence[CommitInput],
    loaded: LoadedModel,
    store: FeatureStore | None,
    settings: Settings,
    *,
    top: int = TOP_DRIVERS,
    staleness: Staleness | None = None,
    scorer: Scorer | None = None,
) -> list[CommitScore | CommitNotFound]:
    """The risk of each commit, in order: by sha, from the online store through the model's feature
    service (`store` may be None when every commit comes with metrics); by metrics, as given, with
    missing features scored as unknown and named in a warning. `scorer`: the model's compiled fast path
    (serving.compiled), default its own methods. Raises ValueError, naming the item, for a commit with
    neither or both of sha and metrics."""
    from features.store import online_features, online_vectors

    for i, c in enumerate(commits):
        if problem := _sha_or_metrics(c):
            raise ValueError(f"commit {i} (of {c.repo}): {problem}")
    names = loaded.model.features
    reads_code = is_code_model(loaded.model)
    results: list[CommitScore | CommitNotFound | None] = [None] * len(commits)
    rows: list[Sequence[float | None]] = []  # None: missing (NaN in the matrix)
    codes: list[Mapping[str, Any] | None] = []  # code columns of each row (code-reading models)
    positions: list[int] = []
    notes: list[list[str]] = []
    by_sha = [(i, c, c.sha) for i, c in enumerate(commits) if c.sha is not None]
    stored: np.ndarray | None = None  # the vectors of the commits found by sha, when read as one matrix
    if by_sha:
        if store is None:
            raise ValueError("scoring commits by sha needs the feature store")
        entities = [{"repo": c.repo, "sha": sha} for _, c, sha in by_sha]
        columns = _vector_columns(tuple(names))
        vectors = (
            None if reads_code or columns is None else online_vectors(store, loaded.feature_service, entities)
        )
        if vectors is not None:
            known = ~np.isnan(vectors).all(axis=1)
            stored = vectors[known][:, columns]
            for (i, c, sha), is_known in zip(by_sha, known.tolist(), strict=True):
                if is_known:
                    positions.append(i)
                    notes.append([])
                    codes.append(None)
                else:
                    message = f"commit {sha} of {c.repo} is not in the feature store"
                    results[i] = CommitNotFound(repo=c.repo, sha=sha, message=message)
        else:
            found = online_features(store, loaded.feature_service, entities)
            take = _getter(names)
            for (i, c, sha), values in zip(by_sha, found.rows, strict=True):
                if all(v is None for v in values.values()):
                    message = f"commit {sha} of {c.repo} is not in the feature store"
                    results[i] = CommitNotFound(repo=c.repo, sha=sha, message=message)
                    continue
                rows.append(take(values))
                codes.append(values if reads_code else None)
                positions.append(i)
                notes.append([])
    for i, c in enumerate(commits):
        if c.metrics is None:
            continue
        unknown = sorted(set(c.metrics) - set(names))
        missing = [n for n in names if n not in c.metrics]
        item: list[str] = []
        if unknown:
            item.append(f"ignored unknown features: {', '.join(unknown)}")
        if missing:
            item.append(f"missing features scored as unknown: {len(missing)} of {len(names)}")
        rows.append([float(c.metrics.get(n, np.nan)) for n in names])
        code = getattr(c, "code", None)
        codes.append(code)
        if reads_code and code is None:
            item.append(
                f"{loaded.feature_service} reads the code: scored without it (as an empty diff); "
                "ask by sha, or score the change with `awo risk --base`"
            )
        positions.append(i)
        notes.append(item)
    if positions:
        matrix = np.array(rows, dtype=float).reshape(len(rows), len(names))  # None (missing): NaN
        if stored is not None:
            matrix = np.concatenate([stored, matrix]) if len(rows) else np.ascontiguousarray(stored)
        lines: list[list[LineDriver]] = [[] for _ in positions]
        if reads_code:
            raw, probabilities, bias, drivers, lines = _explained_code(loaded.model, matrix, codes, top)
        else:
            raw, probabilities, bias, drivers = _explained(loaded, matrix, top, scorer)
        inputs = _plain(matrix)
        store_notes = (
            staleness.warnings(store, settings, loaded.feature_service)
            if by_sha and staleness is not None and store is not None
            else []
        )
        info = model_info(loaded)
        # the per-row Python is only the result objects: every number comes out of NumPy in one tolist
        for i, p, b, r, base, row_drivers, row_inputs, row_notes, row_lines in zip(
            positions,
            probabilities.tolist(),
            bands(probabilities, settings.risk_bands),
            np.asarray(raw, dtype=float).tolist(),
            np.asarray(bias, dtype=float).tolist(),
            drivers,
            inputs,
            notes,
            lines,
            strict=True,
        ):
            c = commits[i]
            results[i] = CommitScore(
                repo=c.repo,
                sha=c.sha,
                probability=p,
                band=b,
                model=info,
                raw_score=r,
                base_value=base,
                drivers=row_drivers,
                features=dict(zip(names, row_inputs, strict=True)),
                warnings=row_notes + store_notes if c.sha else row_notes,
                lines=row_lines,
            )
    return [r for r in results if r is not None]


@functools.lru_cache(maxsize=8)
def _vector_columns(names: tuple[str, ...]) -> list[int] | None:
    """Where each of a model's features sits in the packed change_risk_v1 vector (None: not all do)."""
    if not set(names) <= set(CHANGE_RISK_V1):
        return None
    position = {n: j for j, n in enumerate(CHANGE_RISK_V1)}
    return [position[n] for n in names]


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """The values of `names` in a row of the online store, in order (None where missing), in one C call
    when the row holds them all."""
    if len(names) == 1:
        return lambda values: [values.get(names[0])]
    every = operator.itemgetter(*names)

    def take(values: Mapping[str, Any]) -> Sequence[Any]:
        try:
            return every(values)
        except KeyError:
            return [values.get(n) for n in names]

    return take


def score_unmined_change(
    repo_path: Path,
    base: str,
    head: str,
    loaded: LoadedModel,
    settings: Settings,
    *,
    tables: Path | None = None,
    name: str | None = None,
    at: datetime | None = None,
    top: int = TOP_DRIVERS,
) -> UnminedChangeScore:
    """The change-risk of what `head` adds over its merge base with `base` (a pull request's commits, not
    mined yet), measured as one change as of `at` (default now) against the history mined and labelled
    into `tables` (default `<data root>/<repo name>/`), nothing written: its full change_risk_v1 vector,
    computed with the miner's and the feature build's code. Only features that cannot be known (the
    defect history of an unlabelled repository, features the model reads beyond that vector) are scored
    as unknown, and named in a warning."""
    from features.mining.diff import measure_unmined_change

    change = measure_unmined_change(
        repo_path, base, head, settings, tables, name, None if at is None else pd.Timestamp(at)
    )
    vector = change.vector
    names = loaded.model.features
    unlabelled = [n for n in names if n in change.unknown]
    beyond = [n for n in names if n not in vector]
    metrics = {n: vector.get(n, math.nan) for n in names}
    code = {
        "added_lines": change.added_lines,
        "removed_lines": change.removed_lines,
        "message": change.message,
        "added_where": change.added_where,
    }
    score = score_commits(
        [CommitRef(repo=change.repo, metrics=metrics, code=code)], loaded, None, settings, top=top
    )
    result = score[0]
    if not isinstance(result, CommitScore):  # a metrics query is always scored
        raise TypeError(f"unexpected result {result!r}")
    if unlabelled:
        result.warnings.append(
            f"the mined commits of {change.repo} are not labelled (run `awo label`): defect history "
            f"scored as unknown: {', '.join(unlabelled)}"
        )
    if beyond:
        result.warnings.append(
            f"features of {loaded.feature_service} not computed for an unmined change, scored as unknown: "
            f"{', '.join(beyond)}"
        )
    return UnminedChangeScore(change=change, score=result)


# --- deployments ---


@functools.lru_cache(maxsize=16)
def _delivery_tables(
    deployments_key: tuple[str, int, int], incidents_key: tuple[str, int, int] | None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The deployments (with when each failure became known) and incidents tables; read again only when
    a file changes (an ingest rewrites it)."""
    incidents = read_table(Path(incidents_key[0])) if incidents_key else None
    deployments = read_table(Path(deployments_key[0]))
    if deployments is None:
        raise FileNotFoundError(deployments_key[0])
    deployments = deployments.sort_values("started_at", kind="stable").reset_index(drop=True)
    deployments["known_failed_at"] = known_failure_times(deployments, incidents)
    return deployments, incidents


@functools.lru_cache(maxsize=16)
def _authors(commits_key: tuple[str, int, int]) -> dict[str, str]:
    """sha → author_id of the mined commits."""
    import pyarrow.parquet as pq

    table = pq.read_table(commits_key[0], columns=["sha", "author_id"])
    return dict(zip(table.column("sha").to_pylist(), table.column("author_id").to_pylist(), strict=True))


def _timeline(settings: Settings, repo: str, service: str) -> ServiceTimeline | None:
    tables = settings.repo_data_dir(repo)
    deployments_key = file_key(tables / DEPLOYMENTS_FILE)
    if deployments_key is None:
        return None
    deployments, incidents = _delivery_tables(deployments_key, file_key(tables / INCIDENTS_FILE))
    return ServiceTimeline.of(deployments, incidents, service)


def deployment_vectors(
    plans: Sequence[DeploymentPlan], store: FeatureStore, settings: Settings
) -> list[DeploymentVector]:
    """The DEPLOYMENT_FEATURES of each plan, as the feature build computes them for a past deployment:
    change features of the shipped commits (online store, commit_change view) and their authors (mined
    commits table); previous deployment of the service and environment, and the service's health, as of
    the plan's start, from the delivery tables under the data root (deployments, incidents)."""
    wanted = [(p.repo, sha) for p in plans for sha in p.commits]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    if wanted:
        response = store.get_online_features(
            features=[f"commit_change:{n}" for n in SHIPPED_COMMIT_FEATURES],
            entity_rows=[{"repo": repo, "sha": sha} for repo, sha in wanted],
        ).to_dict()
        for k, key in enumerate(wanted):
            values = {n: response[n][k] for n in SHIPPED_COMMIT_FEATURES}
            if any(v is not None for v in values.values()):
                found[key] = values
    vectors = []
    for plan in plans:
        notes: list[str] = []
        at = as_utc(plan.started_at)
        commits_key = file_key(settings.repo_data_dir(plan.repo) / COMMITS_FILE)
        authors = _authors(commits_key) if commits_key else {}
        known = [sha for sha in plan.commits if (plan.repo, sha) in found]
        if len(known) < len(plan.commits):
            missing = len(plan.commits) - len(known)
            notes.append(f"{missing} of {len(plan.commits)} commits are not in the feature store")
        shipped = pd.DataFrame(
            [found[(plan.repo, sha)] for sha in known], columns=list(SHIPPED_COMMIT_FEATURES), dtype=float
        )
        if all(sha in authors for sha in known):
            shipped["author_id"] = [authors[sha] for sha in known]
        else:
            notes.append(f"authors unknown: commits of {plan.repo} are not in the mined tables")
        timeline = _timeline(settings, plan.repo, plan.service)
        if timeline is None:
            notes.append(f"no delivery history of {plan.repo} ingested: the service's health is unknown")
            timeline = ServiceTimeline(*(np.array([]) for _ in range(4)))
            unknown = {*SERVICE_HEALTH_FEATURES, "hours_since_previous_deploy"}
        else:
            unknown = set()
            if not len(timeline.starts):
                notes.append(f"no recorded deployments of service {plan.service!r}")
        features = deployment_features(shipped, plan.strategy, plan.environment, at, timeline)
        features = {n: (math.nan if n in unknown else v) for n, v in features.items()}
        health = {n: _finite(features[n]) for n in SERVICE_HEALTH_FEATURES}
        vectors.append(DeploymentVector(features=features, health=health, warnings=notes))
    return vectors


def score_deployment(
    plan: DeploymentPlan,
    loaded: LoadedModel,
    store: FeatureStore,
    settings: Settings,
    *,
    top: int = TOP_DRIVERS,
    scorer: Scorer | None = None,
) -> DeploymentScore:
    """The failure probability of a deployment, on the vector of `deployment_vectors` (`scorer`: as in
    score_commits)."""
    vector = deployment_vectors([plan], store, settings)[0]
    names = loaded.model.features
    notes = list(vector.warnings)
    unknown = [n for n in names if n not in vector.features]
    if unknown:
        notes.append(
            f"features of {loaded.feature_service} not computed at serving, scored as unknown: {unknown}"
        )
    matrix = np.array([[vector.features.get(n, math.nan) for n in names]], dtype=float)
    _, probabilities, _, drivers = _explained(loaded, matrix, top, scorer)
    p = float(probabilities[0])
    return DeploymentScore(
        service=plan.service,
        environment=plan.environment,
        probability=p,
        band=band(p, settings.risk_bands),
        model=model_info(loaded),
        drivers=drivers[0],
        health=vector.health,
        features={n: _finite(matrix[0, j]) for j, n in enumerate(names)},
        warnings=notes,
    )
