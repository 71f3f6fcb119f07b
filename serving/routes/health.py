"""Liveness, readiness and Prometheus metrics (unauthenticated, for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from serving.admission import AdmittedRoute
from serving.deps import StateDep

router = APIRouter(tags=["health"], route_class=AdmittedRoute)  # no caller: open, body size still capped


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="A champion is loaded and can be served")
def readyz(state: StateDep) -> JSONResponse:
    served = state.champions.served  # one snapshot: models and errors of the same reload
    ready = served.models.get("change-risk") is not None
    body = {
        "ready": ready,
        "models": {name: m.version for name, m in served.models.items()},
        "registry_errors": served.errors,
        "last_reload": served.last_reload,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics")
def metrics(state: StateDep) -> Response:
    payload, content_type = state.telemetry.exposition()
    return Response(payload, media_type=content_type)
