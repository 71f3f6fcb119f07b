"""`awo ingest deployments|incidents|test-runs FILE`: validate delivery history, store it beside the
mined commits, and derive the linked tables.

Stored (under the repository's data directory, replaced together, crash-safely):
- `raw_<kind>.parquet`: every accepted row; a row whose key (deploy_id / incident_id / run_id+test_id+
  attempt) was ingested before replaces it, so ingesting the same file twice changes nothing.
- `deployments.parquet`: finished deployments with `failed`, `failure_reason`, `sha_known`, `first_deploy`,
  `shipped` (the commits each one shipped) and `n_shipped`; a paused one waits in `raw_deployments` until
  its final outcome replaces it (features.delivery.finished_deployments).
- `incidents.parquet`: incidents with `severity_level`, `linked_deploy_id` and the `link_rule` used.
- `tests.parquet`: per test, runs, failures, flake rate and durations (see features.delivery.flakiness).
Rejected rows go to `rejects/<kind>-<file name>.csv` with line, field and reason.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ValidationError

from features.delivery import (
    KINDS,
    SEVERITY_LEVEL,
    finished_deployments,
    flakiness,
    iter_field_errors,
    label_deployments,
    link_incidents,
    shipped_commits,
)
from features.errors import AwoError, BadTable
from features.settings import Settings
from features.tables import (
    DEPLOYMENTS_FILE,
    FILES_FILE,
    GRAPH_FILE,
    INCIDENTS_FILE,
    TESTS_FILE,
    atomic_write_text,
    exclusive,
    raw_file,
    read_table,
    write_tables,
)

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass
class Reject:
    line: int
    field: str
    reason: str
    raw: str


@dataclass
class IngestResult:
    kind: str
    source: Path
    rows_read: int = 0
    accepted: int = 0
    rejects: list[Reject] = field(default_factory=list)
    rejects_path: Path | None = None
    stored: int = 0
    deployments: int = 0
    failed_deployments: int = 0
    unfinished_deployments: int = 0  # paused: stored raw, left out of the labelled table
    incidents: int = 0
    linked_incidents: int = 0
    tests: int = 0
    flaky_tests: int = 0
    warnings: list[str] = field(default_factory=list)


def _read_records(path: Path, model: type[BaseModel]) -> list[tuple[int, dict | None, str]]:
    """(line number, record or None when unparsable, raw text) for each data line of the file."""
    columns = set(model.model_fields)
    required = {name for name, spec in model.model_fields.items() if spec.is_required()}
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AwoError(f"{path}: unknown format {path.suffix!r}; use .csv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AwoError(f"{path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise BadTable(f"{path}: not UTF-8 text ({exc})") from None
    records: list[tuple[int, dict | None, str]] = []
    if fmt == "csv":
        lines = text.splitlines()
        reader = csv.DictReader(lines)
        header = set(reader.fieldnames or [])
        missing = sorted(required - header)
        unknown = sorted(header - columns)
        if missing or unknown:
            raise BadTable(
                f"{path}, line 1 (header): "
                + (f"missing columns {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown columns {unknown}" if unknown else "")
            )
        for row in reader:
            line = reader.line_num
            if None in row:  # more cells than header columns
                records.append((line, None, lines[line - 1] if line - 1 < len(lines) else ""))
            else:
                # An empty optional cell means "not given"; an empty required one fails validation.
                given = {k: v for k, v in row.items() if v != "" or k in required}
                records.append((line, given, lines[line - 1]))
        return records
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            records.append((number, None, raw))
            continue
        records.append((number, value if isinstance(value, dict) else None, raw))
    return records


def validate_file(kind: str, path: Path) -> tuple[pd.DataFrame, list[Reject], int]:
    """Accepted rows as a frame, the rejects, and the number of data rows read."""
    model, key = KINDS[kind]
    good: list[dict] = []
    rejects: list[Reject] = []
    first_line_of: dict[tuple, int] = {}
    records = _read_records(path, model)
    for line, record, raw in records:
        if record is None:
            rejects.append(Reject(line, "row", "not a record (bad JSON or more cells than columns)", raw))
            continue
        try:
            row = model.model_validate(record)
        except ValidationError as exc:  # bad data: every field error is reported; anything else is a bug
            for field_name, reason in iter_field_errors(exc):
                rejects.append(Reject(line, field_name, reason, raw))
            continue
        values = row.model_dump()
        identity = tuple(values[k] for k in key)
        if identity in first_line_of:
            rejects.append(Reject(line, ",".join(key), f"duplicate of line {first_line_of[identity]}", raw))
            continue
        first_line_of[identity] = line
        good.append(values)
    frame = pd.DataFrame(good, columns=list(model.model_fields))
    return frame, rejects, len(records)


def ingest_file(
    kind: str, path: Path, settings: Settings, out_dir: Path, strict: bool = False
) -> IngestResult:
    if kind not in KINDS:
        raise AwoError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    path = Path(path)
    result = IngestResult(kind=kind, source=path)
    frame, rejects, read = validate_file(kind, path)
    result.rows_read, result.accepted, result.rejects = read, len(frame), rejects
    if strict and rejects:
        first = rejects[0]
        raise BadTable(
            f"{path}: {len(rejects)} bad rows, file rejected (--strict); first: line {first.line}, "
            f"field {first.field}: {first.reason}"
        )
    _, key = KINDS[kind]
    raw_name = raw_file(kind)
    with exclusive(out_dir):
        stored = read_table(out_dir / raw_name)
        if stored is not None and len(frame):
            keys = frame[list(key)].astype(str).agg("\x1f".join, axis=1)
            old_keys = stored[list(key)].astype(str).agg("\x1f".join, axis=1)
            stored = stored[~old_keys.isin(set(keys))]
        merged = frame if stored is None else pd.concat([stored, frame], ignore_index=True)
        merged = merged.sort_values(list(key), kind="stable").reset_index(drop=True)
        result.stored = len(merged)
        tables = {raw_name: merged}
        tables.update(_derive(out_dir, settings, {kind: merged}, result))
        write_tables(out_dir, {name: _arrow(t) for name, t in tables.items()})
        if rejects:
            result.rejects_path = _write_rejects(out_dir, kind, path, rejects)
    return result


def _arrow(frame: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def _derive(out_dir: Path, settings: Settings, fresh: dict[str, pd.DataFrame], result: IngestResult) -> dict:
    """The linked tables from every raw table stored so far (the fresh one replacing its stored copy)."""

    def raw(kind: str) -> pd.DataFrame | None:
        if kind in fresh:
            return fresh[kind]
        return read_table(out_dir / raw_file(kind))

    window = pd.Timedelta(hours=settings.incident_window_hours)
    deployments, incidents, runs = raw("deployments"), raw("incidents"), raw("test-runs")
    tables: dict[str, pd.DataFrame] = {}
    if incidents is not None:
        linked = link_incidents(
            incidents, deployments if deployments is not None else _empty_deployments(), window
        )
        linked["severity_level"] = linked["severity"].map(SEVERITY_LEVEL)
        tables[INCIDENTS_FILE] = linked
        result.incidents = len(linked)
        result.linked_incidents = int(linked["linked_deploy_id"].notna().sum())
    if deployments is not None:
        labelled = label_deployments(
            deployments,
            tables.get(INCIDENTS_FILE, _empty_incidents()),
            settings.incident_min_severity,
            window,
        )
        graph = read_table(out_dir / GRAPH_FILE)
        files = read_table(out_dir / FILES_FILE)
        if graph is None or files is None:
            result.warnings.append(
                f"no mined history in {out_dir}: run `awo mine` to know what each deployment shipped"
            )
            parents, service_commits = {}, {}
        else:
            parents = dict(zip(graph["sha"], graph["parents"].map(list), strict=True))
            service_commits = files.groupby("service")["sha"].agg(set).to_dict()
        shipped = shipped_commits(labelled, parents, service_commits)
        shipped["n_shipped"] = shipped["shipped"].map(len)
        # What each deployment shipped is counted over every deployment, paused ones included (they did
        # start), before the unlabelled ones are left out.
        finished = finished_deployments(shipped)
        result.unfinished_deployments = len(shipped) - len(finished)
        if result.unfinished_deployments:
            result.warnings.append(
                f"{result.unfinished_deployments} paused deployments are not labelled until a row with "
                "their final outcome is ingested"
            )
        shipped = finished
        unknown = int((~shipped["sha_known"]).sum())
        if unknown and parents:
            result.warnings.append(f"{unknown} deployments name a sha that is not in the mined history")
        tables[DEPLOYMENTS_FILE] = shipped
        result.deployments = len(shipped)
        result.failed_deployments = int(shipped["failed"].sum())
    if runs is not None:
        tests = flakiness(runs)
        tables[TESTS_FILE] = tests
        result.tests = len(tests)
        result.flaky_tests = int((tests["flake_rate"] > 0).sum())
    return tables


def _empty_deployments() -> pd.DataFrame:
    return pd.DataFrame(columns=["deploy_id", "service", "environment", "sha", "started_at"])


def _empty_incidents() -> pd.DataFrame:
    return pd.DataFrame(columns=["incident_id", "severity", "started_at", "linked_deploy_id"])


def _write_rejects(out_dir: Path, kind: str, source: Path, rejects: list[Reject]) -> Path:
    target = out_dir / "rejects" / f"{kind}-{source.stem}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    lines = [["file", "line", "field", "reason", "raw"]]
    lines += [[str(source), str(r.line), r.field, r.reason, r.raw] for r in rejects]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    atomic_write_text(target, buffer.getvalue())
    return target
