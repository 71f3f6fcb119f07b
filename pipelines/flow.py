"""The stages in order, for one repository: mine, label, ingest its delivery history and the agents'
feedback, build and materialize features. Written once; used by `awo retrain`, `awo demo`, the tests and
the benchmarks. Callers that print (the CLI) hear of each stage's result through a `StageListener`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feast import FeatureStore

    from features.settings import Settings
    from pipelines.features_job import BuildResult
    from pipelines.ingest import IngestResult
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult

DELIVERY_FILES = (
    ("deployments", "deployments.csv"),
    ("incidents", "incidents.csv"),
    ("test-runs", "test-runs.csv"),
)


class StageListener:
    """Told the result of each stage as soon as it is done; the default hears nothing."""

    def mined(self, result: MineResult) -> None:
        pass

    def labelled(self, result: LabelResult) -> None:
        pass

    def ingested(self, result: IngestResult) -> None:
        pass

    def features_ready(
        self, built: BuildResult, applied: dict[str, int], materialized: dict[str, Any]
    ) -> None:
        pass


def prepare(
    repo: Path,
    settings: Settings,
    tables: Path,
    name: str | None = None,
    delivery: Path | None = None,
    *,
    feedback: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    listener: StageListener | None = None,
) -> FeatureStore:
    """Run every stage up to a materialized feature store; returns the Feast store. `delivery` is a folder
    with deployments.csv, incidents.csv and test-runs.csv (the demo world's layout), if any. The files of
    `feedback` (default `<data root>/feedback/`, written by agents.feedback) are ingested after it, when
    present, so a rollout's recorded outcome replaces what the delivery folder says of the same deployment
    and becomes a label now. Mining is incremental, so a second run on a grown repository mines only the
    new commits."""
    from features.store import apply, materialize, open_store
    from features.tables import FEEDBACK_DIR, FEEDBACK_FILES
    from pipelines.features_job import build_features
    from pipelines.ingest import ingest_file
    from pipelines.label import label_repository
    from pipelines.mine import mine_repository

    listener = listener or StageListener()
    listener.mined(mine_repository(repo, settings, tables, name=name, on_progress=on_progress))
    listener.labelled(label_repository(repo, settings, tables))
    if delivery is not None:
        for kind, filename in DELIVERY_FILES:
            listener.ingested(ingest_file(kind, delivery / filename, settings, tables))
    feedback = feedback if feedback is not None else settings.data_dir / FEEDBACK_DIR
    for kind, filename in FEEDBACK_FILES.items():
        if (feedback / filename).is_file():
            listener.ingested(ingest_file(kind, feedback / filename, settings, tables))
    built = build_features(settings, tables)
    store = open_store(settings)
    applied = apply(store)
    listener.features_ready(built, applied, materialize(store))
    return store
