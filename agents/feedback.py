"""The feedback loop's one writer: agents record rollouts' outcomes and incidents as rows of the ingestion
schemas (features.delivery) in `<data root>/feedback/`, which the next `awo retrain` ingests as labels.
Each write replaces the row of the same key under a file lock, and swaps the whole file in atomically."""

from __future__ import annotations

import csv
import fcntl
import io
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from features.delivery import KINDS, DeploymentRow, IncidentRow, iter_field_errors
from features.errors import AwoError, BadTable
from features.tables import FEEDBACK_FILES, atomic_write_text, feedback_file

SUMMARY_CHARS = 300  # an incident's summary is one short line; the full evidence lives in the audit log
LOCK_WAIT_S = 30.0  # a writer holds the lock for one read and one rewrite of a small file


@dataclass(frozen=True)
class Recorded:
    """What a `record_*` call left in the file: the row as written (CSV cells), and whether it was new,
    replaced an earlier row of the same key, or was already there unchanged (`written` False)."""

    kind: str
    path: Path
    key: str
    row: dict[str, str]
    written: bool
    replaced: bool


def record_deployment(data_root: Path, row: DeploymentRow | Mapping[str, Any]) -> Recorded:
    """Record a deployment's outcome (a finished one, or `paused` until its final outcome is recorded
    under the same deploy_id)."""
    return _record("deployments", data_root, row)


def record_incident(data_root: Path, row: IncidentRow | Mapping[str, Any]) -> Recorded:
    """Record an incident; its summary is cut to one line of at most SUMMARY_CHARS characters."""
    values = row.model_dump() if isinstance(row, IncidentRow) else dict(row)
    values["summary"] = one_line(str(values.get("summary") or ""))
    return _record("incidents", data_root, values)


def one_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    """`text` on one line (runs of whitespace become a space), cut to `limit` characters with an ellipsis."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def csv_cells(row: BaseModel) -> dict[str, str]:
    """A validated row as the CSV cells `awo ingest` reads back: ISO 8601 times, empty for None, and free
    text that a spreadsheet would take for a formula (=, +, -, @ first) quoted with a leading '."""
    values = row.model_dump(mode="json")
    cells = {name: "" if value is None else str(value) for name, value in values.items()}
    if cells.get("summary", "")[:1] in ("=", "+", "-", "@"):
        cells["summary"] = "'" + cells["summary"]
    return cells


def _record(kind: str, data_root: Path, row: BaseModel | Mapping[str, Any]) -> Recorded:
    model, key_columns = KINDS[kind]
    path = feedback_file(Path(data_root), kind)
    try:
        validated = model.model_validate(row.model_dump() if isinstance(row, BaseModel) else dict(row))
    except ValidationError as exc:
        field, reason = next(iter(iter_field_errors(exc)))
        raise BadTable(f"{path}: {kind} row not recorded: field {field}: {reason}") from None
    cells = csv_cells(validated)
    key = "\x1f".join(cells[k] for k in key_columns)
    columns = list(model.model_fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        for stale in path.parent.glob(f".tmp-*-{path.name}"):  # left by a writer killed mid-write
            stale.unlink()
        rows = _read_rows(path, columns)
        at = next((i for i, r in enumerate(rows) if "\x1f".join(r[k] for k in key_columns) == key), None)
        if at is not None and rows[at] == cells:
            return Recorded(kind, path, key, cells, written=False, replaced=False)
        if at is None:
            rows.append(cells)
        else:
            rows[at] = cells
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
    return Recorded(kind, path, key, cells, written=True, replaced=at is not None)


def _read_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """The rows of a feedback file, every column present (empty where the file lacks an optional one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    reader = csv.DictReader(io.StringIO(text))
    unknown = sorted(set(reader.fieldnames or []) - set(columns))
    if unknown:
        raise BadTable(f"{path}, line 1 (header): unknown columns {unknown}; expected {columns}")
    rows = []
    for row in reader:
        if None in row:
            raise BadTable(f"{path}, line {reader.line_num}: more cells than columns")
        rows.append({c: row.get(c) or "" for c in columns})
    return rows


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One writer of the feedback folder at a time; a second waits (up to LOCK_WAIT_S) rather than fail,
    since two agents finishing rollouts together is normal."""
    with open(directory / ".lock", "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AwoError(
                        f"{directory / '.lock'}: another writer held it for {LOCK_WAIT_S:.0f} s"
                    ) from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


assert set(FEEDBACK_FILES) <= set(KINDS)
