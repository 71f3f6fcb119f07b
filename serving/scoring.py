"""The risk API's side of scoring: requests in, the scoring core (serving.core) called, its dataclasses
turned into the response models, and the feature values the prediction log keeps for drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pydantic_core

from features.settings import Settings
from models.registry import LoadedModel
from serving.compiled import Scorer
from serving.core import (
    CommitInput,
    CommitNotFound,
    CommitScore,
    DeploymentPlan,
    Staleness,
    score_commits,
    score_deployment,
)
from serving.core import Driver as CoreDriver
from serving.core import ModelInfo as CoreModelInfo
from serving.schemas import DeploymentQuery, DeploymentRisk, Driver, ModelRef

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["Staleness", "commit_risk_json", "commit_risks", "deployment_risk"]


def _drivers(drivers: list[CoreDriver]) -> list[Driver]:
    return [Driver(feature=d.feature, value=d.value, contribution=d.contribution) for d in drivers]


def _model(info: CoreModelInfo) -> ModelRef:
    return ModelRef(name=info.name, version=info.version, kind=info.kind)


def _commit_item(result: CommitScore | CommitNotFound) -> dict[str, Any]:
    """One result as the CommitRisk response model serializes it: its fields in the model's order, plain
    values (the scoring core's are typed already, so validating them again only costs time)."""
    if isinstance(result, CommitNotFound):
        return {
            "repo": result.repo,
            "sha": result.sha,
            "probability": None,
            "band": None,
            "model": None,
            "raw_score": None,
            "base_value": None,
            "drivers": [],
            "lines": [],
            "warnings": [],
            "error": {"code": result.code, "status": result.status, "message": result.message},
        }
    info = result.model
    return {
        "repo": result.repo,
        "sha": result.sha,
        "probability": result.probability,
        "band": result.band,
        "model": {"name": info.name, "version": info.version, "kind": info.kind},
        "raw_score": result.raw_score,
        "base_value": result.base_value,
        "drivers": [
            {"feature": d.feature, "value": d.value, "contribution": d.contribution} for d in result.drivers
        ],
        "lines": [{"where": d.where, "line": d.line, "score": d.score} for d in result.lines],
        "warnings": result.warnings,
        "error": None,
    }


def commit_risk_json(items: list[dict[str, Any]]) -> bytes:
    """The CommitRiskResponse body of `items` (from commit_risks), byte for byte what FastAPI writes for
    the response model (pydantic-core's JSON writer, the same one), without building a model per item."""
    return pydantic_core.to_json({"results": items})


def commit_risks(
    queries: Sequence[CommitInput],
    loaded: LoadedModel,
    store: FeatureStore,
    settings: Settings,
    stale: Staleness,
    top: int,
    logged: list[str] | None = None,
    scorer: Scorer | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, float | None]]]:
    """The risk of each query, in order, as CommitRisk items (plain dicts: commit_risk_json writes them),
    and the values of the `logged` features of each (for the prediction log's drift report; empty for
    unscored items). `scorer`: the model's fast path."""
    results = score_commits(queries, loaded, store, settings, top=top, staleness=stale, scorer=scorer)
    values = [
        {name: r.features[name] for name in logged or [] if name in r.features}
        if isinstance(r, CommitScore)
        else {}
        for r in results
    ]
    return [_commit_item(r) for r in results], values


def deployment_risk(
    query: DeploymentQuery,
    loaded: LoadedModel,
    store: FeatureStore,
    settings: Settings,
    scorer: Scorer | None = None,
) -> DeploymentRisk:
    plan = DeploymentPlan(
        repo=query.repo,
        service=query.service,
        environment=query.environment,
        commits=list(query.commits),
        strategy=query.strategy,
        started_at=query.started_at,
    )
    result = score_deployment(plan, loaded, store, settings, scorer=scorer)
    return DeploymentRisk(
        service=result.service,
        environment=result.environment,
        probability=result.probability,
        band=result.band,
        model=_model(result.model),
        drivers=_drivers(result.drivers),
        health=result.health,
        warnings=result.warnings,
    )
