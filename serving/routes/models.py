"""The models served: champion and challenger with their metrics and drift; reload without restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Security

from serving.admission import AdmittedRoute, caller
from serving.auth import READ, RELOAD
from serving.deps import StateDep
from serving.predictions import psi
from serving.schemas import Problem

router = APIRouter(tags=["models"], route_class=AdmittedRoute)
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 403: {"model": Problem}}


@router.get(
    "/models",
    dependencies=[Security(caller, scopes=[READ])],
    responses=ERRORS,
    summary="Champion and challenger versions, their metrics, and today's drift",
)
def models(state: StateDep) -> dict:
    described = state.champions.describe()
    since = datetime.now(UTC) - timedelta(days=1)
    for name, entry in described.items():
        served = state.champions.get(name)
        reference = (served.meta.get("reference") or {}) if served else {}
        scores, features = state.predictions.since(name, since)
        drift: dict[str, Any] = {"predictions_last_24h": len(scores)}
        if reference.get("probability"):
            drift["score_psi"] = psi(reference["probability"], scores)
        drift["feature_psi"] = {
            f: psi(ref, _values(features, f)) for f, ref in (reference.get("features") or {}).items()
        }
        entry["drift"] = drift
    return described


def _values(rows: list[dict], feature: str):
    import numpy as np

    return np.array([r[feature] for r in rows if r.get(feature) is not None], dtype=float)


@router.post(
    "/models/reload",
    dependencies=[Security(caller, scopes=[RELOAD])],
    responses=ERRORS,
    summary="Load the current champions now",
)
def reload(state: StateDep) -> dict:
    report = state.reload()
    return {"loaded": report.loaded, "changed": report.changed, "errors": report.errors}
