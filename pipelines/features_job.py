"""`awo features build`: compute the point-in-time feature tables of one repository's mined, labelled and
ingested data, and write them as the Feast sources under <data root>/feast/sources/ (rows of other
repositories are kept: one store serves the organisation)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from features.errors import AwoError
from features.history import commit_code_table, commit_tables, deployment_tables
from features.settings import Settings
from features.store import mark_rebuilt, sources_dir
from features.tables import (
    COMMITS_FILE,
    DEPLOYMENTS_FILE,
    DIFFS_FILE,
    FILES_FILE,
    INCIDENTS_FILE,
    exclusive,
    read_table,
    write_tables,
)

# Every source row carries the repository it was built from, so rebuilding one repository replaces
# exactly its rows.
ORIGIN = "origin_repo"


@dataclass
class BuildResult:
    repo: str
    rows: dict[str, int] = field(default_factory=dict)
    labelled: bool = False
    seconds: float = 0.0


def _earliest_event(tables: dict[str, pd.DataFrame]) -> pd.Timestamp | None:
    times = [
        frame[column].min()
        for frame in tables.values()
        for column in ("committed_at", "event_at", "started_at")
        if column in frame.columns and len(frame)
    ]
    return min(times) if times else None


def build_features(settings: Settings, data: Path) -> BuildResult:
    started = time.perf_counter()
    commits = read_table(data / COMMITS_FILE)
    files = read_table(data / FILES_FILE)
    if commits is None or files is None:
        raise AwoError(f"no mined tables in {data}: run `awo mine REPO --data {data}` first")
    repo = str(commits["repo"].iloc[0])
    result = BuildResult(repo=repo, labelled="bug_inducing" in commits.columns)
    tables = commit_tables(commits, files)
    diffs = read_table(data / DIFFS_FILE)
    if diffs is not None:  # tables mined before diffs.parquet existed serve change_risk_v1 only
        tables["commit_code"] = commit_code_table(diffs)
    deployments = read_table(data / DEPLOYMENTS_FILE)
    if deployments is not None:
        incidents = read_table(data / INCIDENTS_FILE)
        tables.update(deployment_tables(deployments, incidents, commits, files))
    out = sources_dir(settings)
    with exclusive(out):
        merged = {}
        for name, frame in tables.items():
            # Feast declares every feature Float64: store them so, counts included.
            numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
            frame = frame.astype(dict.fromkeys(numeric, "float64")).assign(**{ORIGIN: repo})
            stored = read_table(out / f"{name}.parquet")
            if stored is not None:
                frame = pd.concat([stored[stored[ORIGIN] != repo], frame], ignore_index=True)
            merged[f"{name}.parquet"] = pa.Table.from_pandas(frame, preserve_index=False)
            result.rows[name] = len(frame)
        write_tables(out, merged)
        mark_rebuilt(settings, _earliest_event(tables))
    result.seconds = time.perf_counter() - started
    return result
