"""`awo serve` (the risk API), `awo token` and `awo mlflow-ui`: the long-running servers and their keys."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from features.errors import AwoError
from features.settings import SCOPES
from pipelines.cli.root import app, console, err_console, load_settings, styled


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64)] = 1,
) -> None:
    """Start the risk API with uvicorn. Each worker reloads the champions on its own timer."""
    import os
    import shutil

    import uvicorn

    from serving.telemetry import WORKER_METRICS_DIR

    settings = load_settings()  # a bad setting fails here, in one line, not inside a uvicorn worker
    if workers > 1:
        # Prometheus counts from every worker, aggregated at /metrics (the client's multi-process mode).
        directory = settings.data_dir / f"prometheus-{port}"
        shutil.rmtree(directory, ignore_errors=True)
        try:
            directory.mkdir(parents=True)
        except OSError as exc:
            raise AwoError(f"cannot create {directory} for the workers' metrics: {exc.strerror}") from None
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # where prometheus_client keeps worker values
        os.environ[WORKER_METRICS_DIR] = str(directory)  # what /metrics aggregates (serving.telemetry)
    if not settings.api_tokens:
        err_console.print(
            styled(
                "warning:",
                "yellow",
                " no API tokens configured: every scoring call will get 401 (create one with `awo token`)",
            )
        )
    console.print(f"risk API on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''})")
    # uvicorn's "auto" loop and HTTP parser are uvloop and httptools (uvicorn[standard]); no access log line
    # per request (the request middleware's metrics and JSON log keep what matters)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        loop="auto",
        http="auto",
    )


@app.command()
def token(
    name: Annotated[str, typer.Option(help="who the token is for")],
    scopes: Annotated[str, typer.Option(help="comma-separated: " + ", ".join(SCOPES))] = "risk:read",
) -> None:
    """Create an API token: prints the token (give it to the client) and the line to add to the config."""
    from serving.auth import new_token

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SCOPES]
    if bad:
        raise AwoError(f"unknown scopes {bad}; use {', '.join(SCOPES)}")
    secret, sha = new_token()
    console.print(f"token (shown once): {secret}", highlight=False)
    console.print("add to the config file (AWO_CONFIG) under api_tokens:", highlight=False)
    console.print(f"  - {{name: {name}, sha256: {sha}, scopes: [{', '.join(wanted)}]}}", highlight=False)


@app.command("mlflow-ui")
def mlflow_ui(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="server processes")] = 1,
) -> None:
    """Start the MLflow UI on the project's tracking store."""
    import os

    from models.registry import tracking_uri

    settings = load_settings()
    uri = tracking_uri(settings)
    artifacts = (settings.data_dir / "mlartifacts").resolve()
    mlflow = Path(sys.executable).with_name("mlflow")
    if not os.access(mlflow, os.X_OK):
        raise AwoError(f"the mlflow command is not installed beside {sys.executable} (expected {mlflow})")
    console.print(f"MLflow UI on http://{host}:{port} for {uri}", highlight=False)
    options = ["--backend-store-uri", uri, "--default-artifact-root", artifacts.as_uri()]
    options += ["--host", host, "--port", str(port), "--workers", str(workers)]
    os.execv(str(mlflow), [str(mlflow), "ui", *options])
