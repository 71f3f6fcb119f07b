"""Schemas of the mined tables and crash-safe writes.

Several tables of one data directory are replaced together through a redo journal: each new table is
written to a temporary file and fsynced, then a journal naming every (temporary → final) pair is written
atomically, then the files are renamed and the journal removed. A crash before the journal leaves the old
tables; a crash after it is finished by the next reader (`recover`). Readers never see a half-written
table or a mix of old and new tables.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import gc
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.change_metrics import KAMEI_METRICS
from features.errors import AwoError, BadTable

JOURNAL = "_journal.json"

# The tables of one repository's data directory.
COMMITS_FILE = "commits.parquet"
FILES_FILE = "files.parquet"
GRAPH_FILE = "graph.parquet"
CANDIDATES_FILE = "szz_candidates.parquet"
DEPLOYMENTS_FILE = "deployments.parquet"
INCIDENTS_FILE = "incidents.parquet"
TESTS_FILE = "tests.parquet"
DIFFS_FILE = "diffs.parquet"

# The feedback loop's folder under the data root: rollouts' outcomes and incidents as the agents recorded
# them, as CSV in the ingestion schemas (agents.feedback writes them; pipelines.flow.prepare ingests them).
FEEDBACK_DIR = "feedback"
FEEDBACK_FILES = {"deployments": "deployments.csv", "incidents": "incidents.csv"}


def feedback_file(data_root: Path, kind: str) -> Path:
    """`<data root>/feedback/deployments.csv` or `.../incidents.csv`."""
    return data_root / FEEDBACK_DIR / FEEDBACK_FILES[kind]


def raw_file(kind: str) -> str:
    """The table of one kind's validated rows as ingested, before linking: raw_deployments.parquet ..."""
    return f"raw_{kind.replace('-', '_')}.parquet"


# Arrow's parquet reader can leave scanner threads in a reference cycle; torn down after Arrow's memory
# pools at interpreter exit, they abort the process ("terminate called without an active exception",
# exit 134; apache/arrow#34314, seen here in 1 of 6 runs of `pd.read_parquet`). Collecting before
# teardown joins them while Arrow is still alive.
atexit.register(gc.collect)

# commits.parquet: one row per non-merge commit, in point-in-time order (`seq`).
COMMITS_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("sha", pa.string()),
        ("seq", pa.int64()),  # position in point-in-time order, 0-based
        ("parents", pa.list_(pa.string())),
        ("committed_at", pa.timestamp("us", tz="UTC")),  # committer date
        ("history_at", pa.timestamp("us", tz="UTC")),  # point-in-time of the metrics (see mine)
        ("author_id", pa.string()),  # salted hash, stable per identity after .mailmap
        ("author_name", pa.string()),
        ("author_email", pa.string()),
        ("is_bot", pa.bool_()),
        ("message_subject", pa.string()),
        ("is_fix", pa.bool_()),
        ("change_kind", pa.string()),
        ("ns", pa.int32()),
        ("nd", pa.int32()),
        ("nf", pa.int32()),
        ("entropy", pa.float64()),
        ("la", pa.int64()),
        ("ld", pa.int64()),
        ("lt", pa.int64()),
        ("fix", pa.bool_()),
        ("ndev", pa.int32()),
        ("age", pa.float64()),
        ("nuc", pa.int32()),
        ("exp", pa.int32()),
        ("rexp", pa.float64()),
        ("sexp", pa.int32()),
    ]
)
assert all(name in COMMITS_SCHEMA.names for name in KAMEI_METRICS)

# commits.parquet after `awo label`: the same, plus the bug-inducing label (null = not mature yet).
LABEL_COLUMNS = ("bug_inducing", "fixed_by", "fix_delay_days")
LABELLED_COMMITS_SCHEMA = (
    COMMITS_SCHEMA.append(pa.field("bug_inducing", pa.bool_()))
    .append(pa.field("fixed_by", pa.list_(pa.string())))
    .append(pa.field("fix_delay_days", pa.float64()))
)

# graph.parquet: every commit reachable from the mined branch head, merges included.
GRAPH_SCHEMA = pa.schema(
    [("sha", pa.string()), ("parents", pa.list_(pa.string())), ("committed_at", pa.timestamp("us", tz="UTC"))]
)

# files.parquet: one row per (commit, file).
FILES_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("sha", pa.string()),
        ("path", pa.string()),
        ("old_path", pa.string()),  # renames only
        ("change_type", pa.string()),  # ADD / MODIFY / DELETE / RENAME
        ("la", pa.int64()),
        ("ld", pa.int64()),
        ("is_binary", pa.bool_()),
        ("is_test", pa.bool_()),
        ("is_docs", pa.bool_()),
        ("is_config", pa.bool_()),
        ("is_migration", pa.bool_()),
        ("is_ui_text", pa.bool_()),
        ("subsystem", pa.string()),
        ("service", pa.string()),
    ]
)


# diffs.parquet: what the change-risk model reads of each mined commit's code (JITLine, MSR 2021, reads
# the tokens of added and removed lines and the message): one row per row of commits.parquet. Binary files
# have no lines; lock files written by package managers (`features.mining.gitlog.LOCK_FILES`) are left out.
DIFF_MAX_LINES = 2_000  # added lines kept per commit, and as many removed lines; the rest is dropped
DIFF_MAX_CHARS = 300  # a longer line is cut to its first 300 characters
# The code columns of a change, as the change_risk_v2 feature service serves them.
CODE_COLUMNS = ("added_lines", "removed_lines", "message")
DIFFS_SCHEMA = pa.schema(
    [
        ("repo", pa.string()),
        ("sha", pa.string()),
        ("seq", pa.int64()),  # as in commits.parquet
        ("committed_at", pa.timestamp("us", tz="UTC")),  # as in commits.parquet
        ("message", pa.string()),  # the full commit message
        ("added_lines", pa.list_(pa.string())),  # without the leading "+", in diff order
        ("added_where", pa.list_(pa.string())),  # "path:line" of each added line in the new file
        ("removed_lines", pa.list_(pa.string())),  # without the leading "-", in diff order
        ("truncated", pa.bool_()),  # lines were dropped over DIFF_MAX_LINES or cut at DIFF_MAX_CHARS
    ]
)


# szz_candidates.parquet: every SZZ verdict of every fix, kept or not, with the reason.
CANDIDATES_SCHEMA = pa.schema(
    [
        ("fix_sha", pa.string()),
        ("candidate_sha", pa.string()),  # null on the row of a part of a fix git could not read
        ("kept", pa.bool_()),
        # reason: "kept: ...", "dropped: ...", "unknown: the fix could not be read in full" (the newest
        # candidate of a fix read in part) or "failed (KIND): PATH: git's message" (a failure row)
        ("reason", pa.string()),
        ("lines", pa.int32()),  # removed lines of the fix last written by the candidate
    ]
)


def as_utc(at: object = None) -> pd.Timestamp:
    """`at` (a datetime, Timestamp or ISO string; None: now) as a UTC Timestamp; a naive time is UTC."""
    stamp = pd.Timestamp.now(tz="UTC") if at is None else pd.Timestamp(at)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def unix_seconds(timestamps: pd.Series) -> np.ndarray:
    """Unix seconds (float, NaN where missing) of a timestamp column, whatever its resolution or zone
    (naive times are UTC)."""
    stamps = pd.to_datetime(timestamps, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def to_arrow(frame: pd.DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    """The frame as an Arrow table of exactly `schema` (extra columns are kept after the schema's)."""
    missing = [f for f in schema.names if f not in frame.columns]
    if missing:
        raise BadTable(f"table {name} lacks columns {missing}")
    extra = [c for c in frame.columns if c not in schema.names]
    table = pa.Table.from_pandas(frame[list(schema.names) + extra], preserve_index=False)
    fields = [schema.field(n) for n in schema.names] + [table.schema.field(c) for c in extra]
    return table.cast(pa.schema(fields))


def recover(directory: Path) -> None:
    """Finish an interrupted multi-table replace, if one was committed to the journal."""
    journal = directory / JOURNAL
    if not journal.exists():
        return
    try:
        moves = json.loads(journal.read_text())
    except json.JSONDecodeError:
        # The journal is written atomically, so a broken one is not ours to interpret.
        raise BadTable(f"{journal} is corrupt; remove it to keep the previous tables") from None
    for tmp, final in moves:
        if (directory / tmp).exists():
            os.replace(directory / tmp, directory / final)
    fsync_dir(directory)
    journal.unlink()
    fsync_dir(directory)


def write_tables(directory: Path, tables: dict[str, pa.Table]) -> None:
    """Replace the named parquet files of `directory` all together, crash-safely."""
    directory.mkdir(parents=True, exist_ok=True)
    recover(directory)
    for stale in directory.glob(".tmp-*"):
        stale.unlink()
    moves: list[tuple[str, str]] = []
    for filename, table in tables.items():
        tmp = f".tmp-{uuid.uuid4().hex}-{filename}"
        with open(directory / tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        moves.append((tmp, filename))
    atomic_write_text(directory / JOURNAL, json.dumps(moves))
    recover(directory)


def read_table(path: Path, schema: pa.Schema | None = None) -> pd.DataFrame | None:
    """A table written by `write_tables`, or None when it does not exist yet."""
    recover(path.parent)
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadTable(f"{path} is not a readable parquet file: {exc}") from exc
    if schema is not None:
        missing = [n for n in schema.names if n not in table.schema.names]
        if missing:
            raise BadTable(f"{path} lacks columns {missing}; re-create it with a full run")
    return table.to_pandas()


def file_key(path: Path) -> tuple[str, int, int] | None:
    """(path, mtime, size) of a file, or None when it does not exist: a cache key that changes when a job
    rewrites the file (tables are replaced whole, never edited in place)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return str(path), stat.st_mtime_ns, stat.st_size


def read_table_cached(path: Path) -> pd.DataFrame | None:
    """`read_table`, read again only when the file changes. Callers must not modify the frame."""
    key = file_key(path)
    return None if key is None else _read_cached(key)


@functools.lru_cache(maxsize=32)
def _read_cached(key: tuple[str, int, int]) -> pd.DataFrame | None:
    return read_table(Path(key[0]))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """The job lock of a data directory: one writer at a time; a second job fails at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AwoError(f"another awo job is writing {directory}; wait for it to finish") from None
        yield
