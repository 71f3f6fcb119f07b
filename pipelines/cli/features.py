"""`awo features ...`: the Feast feature store — register, build, materialize, list, training sets, and
Feast's own UI on the project's registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.errors import AwoError
from pipelines.cli.root import app, console, load_settings

features_app = typer.Typer(
    help="The Feast feature store: apply, build, materialize, list, training sets, its UI."
)
app.add_typer(features_app, name="features")


@features_app.command("apply")
def features_apply() -> None:
    """Register the entities, feature views and feature services in the Feast registry."""
    from features.store import apply, open_store, store_dir

    settings = load_settings()
    counts = apply(open_store(settings))
    console.print(
        f"applied {counts['entities']} entities, {counts['feature_views']} feature views, "
        f"{counts['feature_services']} feature services to {store_dir(settings)}",
        highlight=False,
    )


@features_app.command("build")
def features_build(
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory (as for awo mine)")],
) -> None:
    """Compute point-in-time history features of a repository into the Feast sources."""
    from pipelines.features_job import build_features

    result = build_features(load_settings(), data)
    rows = ", ".join(f"{name} {n}" for name, n in result.rows.items())
    console.print(
        f"built features of {result.repo} in {result.seconds:.1f} s: {rows} rows"
        + ("" if result.labelled else " (no labels yet: run `awo label` for defect history)"),
        highlight=False,
    )


@features_app.command("materialize")
def features_materialize(
    end: Annotated[str | None, typer.Option(help="materialize up to this ISO time (default: now)")] = None,
) -> None:
    """Load the newest feature values into the online store (incremental)."""
    import time
    from datetime import datetime

    from features.store import materialize, open_store

    until = None
    if end:
        try:
            until = datetime.fromisoformat(end.replace("Z", "+00:00"))
        except ValueError:
            raise AwoError(f"--end {end!r} is not an ISO 8601 time") from None
    started = time.perf_counter()
    result = materialize(open_store(load_settings()), until)
    console.print(
        f"materialized {result['feature_views']} feature views up to {result['end']:%Y-%m-%d %H:%M:%S} "
        f"in {time.perf_counter() - started:.1f} s"
        + (f"; skipped (no data yet): {', '.join(result['skipped'])}" if result["skipped"] else ""),
        highlight=False,
    )


@features_app.command("list")
def features_list() -> None:
    """The feature services (what a model asks for) with their features, and the feature views."""
    from features.store import catalog, open_store

    found = catalog(open_store(load_settings()))
    lines = ["feature services:"]
    for name, names in found.services.items():
        lines.append(f"  {name} ({len(names)} features): {', '.join(names)}")
    lines.append("feature views:")
    for name, (keys, names, built) in found.views.items():
        state = "" if built else ", source not built yet"
        lines.append(f"  {name} (keys {', '.join(keys)}; {len(names)} features{state}): {', '.join(names)}")
    distinct = {f for _, names, _ in found.views.values() for f in names}
    lines.append(
        f"{len(found.services)} feature services, {len(found.views)} feature views, "
        f"{len(distinct)} distinct features"
    )
    console.print("\n".join(lines), highlight=False)


@features_app.command("training-set")
def features_training_set(
    entities: Annotated[Path, typer.Option(help="parquet or CSV: join keys and event_timestamp")],
    out: Annotated[Path, typer.Option(help="parquet file to write")],
    service: Annotated[str, typer.Option(help="feature service")] = "change_risk_v1",
) -> None:
    """Point-in-time correct features (Feast get_historical_features) for a list of entities."""
    import pandas as pd

    from features.store import open_store, training_set

    if not entities.exists():
        raise AwoError(f"entities file {entities} does not exist")
    frame = pd.read_csv(entities) if entities.suffix == ".csv" else pd.read_parquet(entities)
    if "event_timestamp" in frame.columns:
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    result = training_set(open_store(load_settings()), frame, service)
    result.to_parquet(out, index=False)
    features = result.shape[1] - frame.shape[1]
    missing = int(result.iloc[:, frame.shape[1] :].isna().all(axis=1).sum())
    console.print(
        f"training set: {len(result)} rows x {features} features of {service} -> {out}"
        f" ({missing} rows with no features at their timestamp)",
        highlight=False,
    )


@features_app.command("repo-path")
def features_repo_path() -> None:
    """The Feast repository directory under the data root (for `feast -c`; the registry lives there)."""
    from features.store import store_dir

    console.print(str(store_dir(load_settings())), highlight=False)


@features_app.command("ui")
def features_ui(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8888,
) -> None:
    """Start Feast's own UI (entities, feature views, feature services, lineage) on the project's registry."""
    import socket

    from features.store import open_store, store_dir

    settings = load_settings()
    registry = store_dir(settings) / "registry.db"
    if not registry.exists():
        raise AwoError(f"the feature registry {registry} is not applied yet: run `awo features apply` first")
    with socket.socket() as probe:  # uvicorn would only log a busy port and exit; say it in one line
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise AwoError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    store = open_store(settings)
    views, services = store.list_feature_views(), store.list_feature_services()
    console.print(
        f"Feast UI on http://{host}:{port}/ for {registry} "
        f"({len(views)} feature views, {len(services)} feature services); Ctrl-C stops it",
        highlight=False,
    )
    store.serve_ui(host=host, port=port)
