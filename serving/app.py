"""The risk API: FastAPI app factory and error mapping (shared state and dependencies: serving.deps).

Run it with `awo serve` (uvicorn); tests build it with `create_app(settings)` (`fast_scoring=False`: the
models' own methods instead of the compiled forests, serving.compiled)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.settings import Settings, load_settings
from serving.admission import AdmittedRoute
from serving.deps import State
from serving.telemetry import configure_json_logging, request_middleware


def create_app(settings: Settings | None = None, fast_scoring: bool = True) -> FastAPI:
    settings = settings or load_settings()
    configure_json_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state.awo
        state.reload()
        state.start_reload_timer()
        yield
        state.stop()

    app = FastAPI(
        title="awo risk API",
        version="1",
        description="Change risk and deployment risk for CI/CD pipelines: calibrated probabilities, risk "
        "bands and the features that drove each score.",
        lifespan=lifespan,
    )
    app.state.awo = State(settings, fast_scoring)
    app.middleware("http")(request_middleware(app.state.awo.telemetry))
    install_error_handlers(app)

    from serving.routes import health, models, risk

    app.include_router(health.router)
    app.include_router(risk.router, prefix="/v1")
    app.include_router(models.router, prefix="/v1")
    check_admitted(app)
    return app


def check_admitted(app: FastAPI) -> None:
    """A route of another class would read its body before the token is checked (serving.admission)."""
    plain = [r.path for r in app.routes if isinstance(r, APIRoute) and not isinstance(r, AdmittedRoute)]
    if plain:
        raise TypeError(f"routes not admitted before their body is read: {plain}")


def install_error_handlers(app: FastAPI) -> None:
    """Errors as JSON `{code, message}`; a validation error names the field path (422)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = (
            exc.detail
            if isinstance(exc.detail, dict)
            else {"code": _code(exc.status_code), "message": str(exc.detail)}
        )
        return JSONResponse(detail, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = errors[0] if errors else {"path": "body", "message": "invalid"}
        return JSONResponse(
            {"code": "invalid_request", "message": f"{first['path']}: {first['message']}", "errors": errors},
            status_code=422,
        )


def _code(status: int) -> str:
    return {
        401: "unauthenticated",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        413: "too_large",
        503: "unavailable",
    }.get(status, "error")
