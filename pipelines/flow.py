"""The stages in order, for one repository: mine, label, ingest its delivery history, build and
materialize features. Used by the tests, the benchmarks and anything else that needs a ready store."""

from __future__ import annotations

from pathlib import Path

from features.settings import Settings

DELIVERY_FILES = (
    ("deployments", "deployments.csv"),
    ("incidents", "incidents.csv"),
    ("test-runs", "test-runs.csv"),
)


def prepare(
    repo: Path, settings: Settings, tables: Path, name: str | None = None, delivery: Path | None = None
):
    """Run every stage up to a materialized feature store; returns the Feast store. `delivery` is a folder
    with deployments.csv, incidents.csv and test-runs.csv (the demo world's layout), if any."""
    from features.store import apply, materialize, open_store
    from pipelines.features_job import build_features
    from pipelines.ingest import ingest_file
    from pipelines.label import label_repository
    from pipelines.mine import mine_repository

    mine_repository(repo, settings, tables, name=name)
    label_repository(repo, settings, tables)
    if delivery is not None:
        for kind, filename in DELIVERY_FILES:
            ingest_file(kind, delivery / filename, settings, tables)
    build_features(settings, tables)
    store = open_store(settings)
    apply(store)
    materialize(store)
    return store
