"""Risk scores of commits and deployments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response, Security, status

from serving.admission import AdmittedRoute, caller
from serving.auth import READ
from serving.deps import State, StateDep
from serving.schemas import CommitBatch, CommitRiskResponse, DeploymentQuery, DeploymentRisk, Problem
from serving.scoring import commit_risk_json, commit_risks, deployment_risk

# Every risk route needs a token with risk:read, checked (with the body's size) before the body is read.
router = APIRouter(tags=["risk"], route_class=AdmittedRoute, dependencies=[Security(caller, scopes=[READ])])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    403: {"model": Problem},
    413: {"model": Problem},
    503: {"model": Problem},
}


def _check_batch(state: State, commits: int) -> None:
    """Refuse batches over the configured size (the caller was admitted before the body was read)."""
    if commits > state.settings.max_batch:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            detail={
                "code": "batch_too_large",
                "message": f"{commits} commits; at most {state.settings.max_batch}",
            },
        )


def _model(state, name: str):
    loaded = state.champions.get(name)
    if loaded is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail={
                "code": "no_model",
                "message": f"no champion of {name!r} is loaded; train and promote one",
            },
        )
    return loaded


@router.post(
    "/risk/commits",
    response_model=CommitRiskResponse,
    responses=ERRORS,
    summary="Score commits by sha (mined) or by raw change metrics (not mined yet)",
)
def risk_commits(batch: CommitBatch, state: StateDep) -> Response:
    # The body is written from the scoring core's typed results in CommitRiskResponse's shape (declared
    # above for the schema), byte for byte what the response model would give: no model per item.
    _check_batch(state, len(batch.commits))
    loaded = _model(state, "change-risk")
    top = list(loaded.meta.get("reference", {}).get("features", {}))
    results, logged_features = commit_risks(
        batch.commits,
        loaded,
        state.store,
        state.settings,
        state.staleness,
        batch.drivers,
        top,
        state.scorer(loaded),
    )
    scored = [(r, f) for r, f in zip(results, logged_features, strict=True) if r["probability"] is not None]
    for r, _ in scored:
        state.telemetry.predictions.labels("change-risk", r["band"]).inc()
    state.predictions.record(
        [
            {
                "kind": "commit",
                "repo": r["repo"],
                "sha": r["sha"],
                "model_name": loaded.name,
                "model_version": loaded.version,
                "probability": r["probability"],
                "band": r["band"],
                "features": features,
            }
            for r, features in scored
        ]
    )
    return Response(commit_risk_json(results), media_type="application/json")


@router.post(
    "/risk/deployments",
    response_model=DeploymentRisk,
    responses=ERRORS,
    summary="Failure probability of a deployment from the commits it ships and its service's health",
)
def risk_deployment(query: DeploymentQuery, state: StateDep) -> DeploymentRisk:
    _check_batch(state, len(query.commits))
    loaded = _model(state, "deploy-failure")
    result = deployment_risk(query, loaded, state.store, state.settings, state.scorer(loaded))
    state.telemetry.predictions.labels("deploy-failure", result.band).inc()
    state.predictions.record(
        [
            {
                "kind": "deployment",
                "repo": query.repo,
                "service": query.service,
                "model_name": loaded.name,
                "model_version": loaded.version,
                "probability": result.probability,
                "band": result.band,
            }
        ]
    )
    return result
