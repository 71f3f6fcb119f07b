"""Scoring: features from the online store (or the request), the champion's calibrated probability, the
risk band, and the features that drove the score."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from features.history import SERVICE_HEALTH_FEATURES, release_features, shipped_change_features
from models.registry import LoadedModel
from serving.schemas import (
    CommitQuery,
    CommitRisk,
    DeploymentQuery,
    DeploymentRisk,
    Driver,
    ItemError,
    ModelRef,
)

TOP_DRIVERS = 5
STALENESS_CACHE_SECONDS = 60.0


def band(probability: float, bands: dict[str, float]) -> str:
    for name in ("critical", "high", "medium"):
        if probability >= bands[name]:
            return name
    return "low"


def model_ref(loaded: LoadedModel) -> ModelRef:
    return ModelRef(name=loaded.name, version=loaded.version, kind=loaded.meta.get("model_kind"))


def drivers(
    loaded: LoadedModel, matrix: np.ndarray, count: int = TOP_DRIVERS
) -> tuple[list[list[Driver]], np.ndarray]:
    """The top `count` features by absolute contribution per row, with their values; and the bias.
    `matrix` holds the model's features in order (NumPy throughout: this is the serving hot path)."""
    model = loaded.model
    contributions = model.contribution_matrix(matrix)
    bias = contributions[:, -1]
    contributions = contributions[:, :-1]
    design = model.matrix(matrix)
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :count]
    columns = model.columns_
    return [
        [
            Driver(feature=columns[j], value=_finite(design[i, j]), contribution=float(contributions[i, j]))
            for j in order[i]
        ]
        for i in range(len(matrix))
    ], bias


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


class Staleness:
    """Stale-store warnings, checked at most once a minute (the check reads the source tables)."""

    def __init__(self) -> None:
        self._at = 0.0
        self._warnings: list[str] = []

    def warnings(self, store, settings, service_name: str) -> list[str]:
        from features.store import feature_service, staleness

        if time.monotonic() - self._at > STALENESS_CACHE_SECONDS:
            self._warnings = staleness(store, settings, feature_service(store, service_name))
            self._at = time.monotonic()
        return self._warnings


def score_commits(
    queries: list[CommitQuery],
    loaded: LoadedModel,
    store,
    settings,
    stale: Staleness,
    top: int = TOP_DRIVERS,
    logged: list[str] | None = None,
) -> tuple[list[CommitRisk], list[dict[str, float | None]]]:
    """The risk of each query, in order, and the values of the `logged` features of each (for the
    prediction log's drift report; empty for unscored items)."""
    from features.store import online_features

    names = loaded.model.features
    results: list[CommitRisk | None] = [None] * len(queries)
    rows: list[list[float]] = []
    positions: list[int] = []
    warnings: list[list[str]] = []
    by_sha = [(i, q) for i, q in enumerate(queries) if q.sha is not None]
    if by_sha:
        found = online_features(
            store, loaded.feature_service, [{"repo": q.repo, "sha": q.sha} for _, q in by_sha]
        )
        for (i, q), values in zip(by_sha, found.rows, strict=True):
            if all(v is None for v in values.values()):
                results[i] = CommitRisk(
                    repo=q.repo,
                    sha=q.sha,
                    error=ItemError(
                        code="unknown_commit",
                        status=404,
                        message=f"commit {q.sha} of {q.repo} is not in the feature store",
                    ),
                )
                continue
            rows.append([np.nan if values.get(n) is None else values[n] for n in names])
            positions.append(i)
            warnings.append([])
    for i, q in enumerate(queries):
        if q.metrics is None:
            continue
        unknown = sorted(set(q.metrics) - set(names))
        missing = [n for n in names if n not in q.metrics]
        notes = []
        if unknown:
            notes.append(f"ignored unknown features: {', '.join(unknown)}")
        if missing:
            notes.append(f"missing features scored as unknown: {len(missing)} of {len(names)}")
        rows.append([float(q.metrics.get(n, np.nan)) for n in names])
        positions.append(i)
        warnings.append(notes)
    if rows:
        matrix = np.array(rows, dtype=float)
        raw = loaded.model.raw_score(matrix)
        probabilities = loaded.model.calibrator_.predict(raw)
        explained, bias = drivers(loaded, matrix, top)
        wanted = [(name, names.index(name)) for name in logged or [] if name in names]
        store_notes = stale.warnings(store, settings, loaded.feature_service) if by_sha else []
        ref = model_ref(loaded)
        for k, i in enumerate(positions):
            q = queries[i]
            p = float(probabilities[k])
            results[i] = CommitRisk(
                repo=q.repo,
                sha=q.sha,
                probability=p,
                band=band(p, settings.risk_bands),
                model=ref,
                raw_score=float(raw[k]),
                base_value=float(bias[k]),
                drivers=explained[k],
                warnings=warnings[k] + (store_notes if q.sha else []),
            )
    values: list[dict[str, float | None]] = [{} for _ in queries]
    if rows:
        for k, i in enumerate(positions):
            values[i] = {name: _finite(matrix[k, j]) for name, j in wanted}
    kept = [i for i, r in enumerate(results) if r is not None]
    return [results[i] for i in kept], [values[i] for i in kept]


def score_deployment(
    query: DeploymentQuery, loaded: LoadedModel, commit_model: LoadedModel | None, store, settings
) -> DeploymentRisk:
    from features.store import online_features

    at = pd.Timestamp(query.started_at or pd.Timestamp.now(tz="UTC"))
    at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    notes: list[str] = []
    found = online_features(store, "change_risk_v1", [{"repo": query.repo, "sha": s} for s in query.commits])
    known = [row for row in found.rows if not all(v is None for v in row.values())]
    if len(known) < len(query.commits):
        notes.append(
            f"{len(query.commits) - len(known)} of {len(query.commits)} commits are not in the feature store"
        )
    shipped = pd.DataFrame(known).astype(float) if known else pd.DataFrame()
    health_response = store.get_online_features(
        features=[f"service_health:{n}" for n in SERVICE_HEALTH_FEATURES],
        entity_rows=[{"service": query.service}],
    ).to_dict()
    health = {
        n: _finite(health_response[n][0]) if health_response[n][0] is not None else None
        for n in SERVICE_HEALTH_FEATURES
    }
    if all(v is None for v in health.values()):
        notes.append(f"no recorded health of service {query.service!r}")
    vector = {
        **shipped_change_features(shipped),
        "hours_since_previous_deploy": math.nan,
        **release_features(query.strategy, query.environment, at),
        **{n: (math.nan if v is None else v) for n, v in health.items()},
    }
    frame = pd.DataFrame([vector]).reindex(columns=loaded.model.features).astype(float)
    p = float(loaded.model.predict_proba(frame)[0])
    return DeploymentRisk(
        service=query.service,
        environment=query.environment,
        probability=p,
        band=band(p, settings.risk_bands),
        model=model_ref(loaded),
        drivers=drivers(loaded, frame.to_numpy(dtype=float))[0][0],
        health=health,
        warnings=notes,
    )
