"""The state of rollouts carried out on a cluster, in SQLite under the data root (`<data root>/rollouts.db`,
WAL): one row per (rollout, service, environment) with its phase and step, an events log, and the action a
person requested (`awo rollout pause|resume|abort`). Every step is one transaction, so a crash loses none."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from features.errors import AwoError, BadConfig

# rolling-back / aborting: the decision to restore is recorded before the first object is touched, so an
# executor killed half-way finishes the restore on resume instead of re-creating what was rejected
Phase = Literal[
    "progressing", "paused", "promoted", "failed", "rolling-back", "aborting", "rolled-back", "aborted"
]
RequestedAction = Literal["pause", "resume", "abort"]
REQUESTED_ACTIONS: tuple[str, ...] = get_args(RequestedAction)
FINAL_PHASES = frozenset({"promoted", "rolled-back", "aborted"})
DB_NAME = "rollouts.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id TEXT NOT NULL,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    namespace TEXT NOT NULL,
    strategy TEXT NOT NULL,
    mode TEXT NOT NULL,               -- deployment | argo
    phase TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,  -- steps done (the index of the next one)
    hold TEXT,                        -- why a paused rollout holds: analysis | request
    total_replicas INTEGER,
    previous_image TEXT,
    previous_replicas INTEGER,
    previous_selector TEXT,           -- JSON object (the Service's selector before blue-green)
    canary_image TEXT,
    verdict TEXT,                     -- JSON: the last analysis verdict
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (rollout_id, service, environment)
);
CREATE TABLE IF NOT EXISTS requests (
    rollout_id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    requested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    task_id TEXT NOT NULL,
    step INTEGER,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_rollout ON events (rollout_id, seq);
"""
_FIELDS = (
    "namespace",
    "strategy",
    "mode",
    "phase",
    "step",
    "hold",
    "total_replicas",
    "previous_image",
    "previous_replicas",
    "previous_selector",
    "canary_image",
    "verdict",
)


class RolloutNotFound(AwoError):
    """A rollout id the store has no record of."""


@dataclass(frozen=True)
class RolloutRecord:
    rollout_id: str
    service: str
    environment: str
    namespace: str
    strategy: str
    mode: str
    phase: Phase
    step: int
    hold: str | None
    total_replicas: int | None
    previous_image: str | None
    previous_replicas: int | None
    previous_selector: dict[str, str] | None
    canary_image: str | None
    verdict: dict[str, Any] | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class RolloutEvent:
    seq: int
    rollout_id: str
    service: str
    environment: str
    task_id: str
    step: int | None
    kind: str
    detail: str
    at: str


@dataclass(frozen=True)
class RolloutStatus:
    """What `awo rollout status ID` shows: the targets, the pending request and the events, oldest first."""

    rollout_id: str
    requested: str | None
    targets: list[RolloutRecord]
    events: list[RolloutEvent]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _record(row: sqlite3.Row) -> RolloutRecord:
    values = dict(row)
    for key in ("previous_selector", "verdict"):
        values[key] = json.loads(values[key]) if values[key] is not None else None
    return RolloutRecord(**values)


class RolloutStore:
    """Rollout state in one SQLite file; safe to share between processes (each call opens its own
    connection; writes take the database lock for the whole step)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def in_data_root(cls, data_dir: Path) -> RolloutStore:
        return cls(Path(data_dir) / DB_NAME)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise BadConfig(f"rollout state {self.path}: cannot open ({exc})") from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            yield conn
        except sqlite3.DatabaseError as exc:
            raise BadConfig(f"rollout state {self.path}: {exc}") from exc
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- records ---------------------------------------------------------------------------------------

    def begin(
        self,
        rollout_id: str,
        service: str,
        environment: str,
        task_id: str,
        *,
        namespace: str,
        strategy: str,
        mode: str,
        total_replicas: int | None,
        previous_image: str | None,
        previous_replicas: int | None,
        canary_image: str | None,
        previous_selector: dict[str, str] | None = None,
    ) -> RolloutRecord:
        """The record of this target, created (phase progressing, step 0) if there is none yet; an existing
        one is returned unchanged, so what ran before is never overwritten by a resumed executor."""
        now = _now()
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO rollouts (rollout_id, service, environment, namespace, strategy, mode,"
                " phase, step, total_replicas, previous_image, previous_replicas, previous_selector,"
                " canary_image, created_at, updated_at) VALUES (?,?,?,?,?,?,'progressing',0,?,?,?,?,?,?,?)",
                (
                    rollout_id,
                    service,
                    environment,
                    namespace,
                    strategy,
                    mode,
                    total_replicas,
                    previous_image,
                    previous_replicas,
                    json.dumps(previous_selector) if previous_selector is not None else None,
                    canary_image,
                    now,
                    now,
                ),
            ).rowcount
            if inserted:
                self._event(conn, rollout_id, service, environment, task_id, 0, "started", f"{strategy}")
        record = self.get(rollout_id, service, environment)
        assert record is not None
        return record

    def get(self, rollout_id: str, service: str, environment: str) -> RolloutRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM rollouts WHERE rollout_id=? AND service=? AND environment=?",
                (rollout_id, service, environment),
            ).fetchone()
        return _record(row) if row is not None else None

    def update(
        self,
        record: RolloutRecord,
        task_id: str,
        kind: str,
        detail: str,
        **fields: Any,
    ) -> RolloutRecord:
        """Change the record's fields and log one event, in one transaction; returns the new record."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown rollout fields {sorted(unknown)}")
        values = dict(fields)
        for key in ("previous_selector", "verdict"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key], default=str)
        keys = list(values)
        with self._transaction() as conn:
            conn.execute(
                f"UPDATE rollouts SET {''.join(f'{k}=?, ' for k in keys)}updated_at=? "
                "WHERE rollout_id=? AND service=? AND environment=?",
                [*(values[k] for k in keys), _now(), record.rollout_id, record.service, record.environment],
            )
            step = fields.get("step", record.step)
            self._event(
                conn, record.rollout_id, record.service, record.environment, task_id, step, kind, detail
            )
        updated = self.get(record.rollout_id, record.service, record.environment)
        assert updated is not None
        return updated

    def log(self, record: RolloutRecord, task_id: str, kind: str, detail: str) -> None:
        """An event with no change to the record (a resume, a restart, an idempotent no-op worth noting)."""
        with self._transaction() as conn:
            self._event(
                conn,
                record.rollout_id,
                record.service,
                record.environment,
                task_id,
                record.step,
                kind,
                detail,
            )

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        rollout_id: str,
        service: str,
        environment: str,
        task_id: str,
        step: int | None,
        kind: str,
        detail: str,
    ) -> None:
        conn.execute(
            "INSERT INTO events (rollout_id, service, environment, task_id, step, kind, detail, at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (rollout_id, service, environment, task_id, step, kind, detail[:2000], _now()),
        )

    def events(self, rollout_id: str) -> list[RolloutEvent]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE rollout_id=? ORDER BY seq", (rollout_id,)
            ).fetchall()
        return [RolloutEvent(**dict(r)) for r in rows]

    def task_events(self, rollout_id: str, task_id: str, kind: str) -> list[RolloutEvent]:
        return [e for e in self.events(rollout_id) if e.task_id == task_id and e.kind == kind]

    # --- what a person asks for (the CLI's pause / resume / abort) ----------------------------------------

    def request(self, rollout_id: str, action: str) -> None:
        """Ask a running (or paused) rollout to pause, resume or abort; the executor acts on it between
        steps. A later request replaces an earlier one."""
        if action not in REQUESTED_ACTIONS:
            raise BadConfig(f"rollout action {action!r}: expected one of {', '.join(REQUESTED_ACTIONS)}")
        with self._transaction() as conn:
            targets = conn.execute(
                "SELECT service, environment, step FROM rollouts WHERE rollout_id=?", (rollout_id,)
            ).fetchall()
            if not targets:
                raise RolloutNotFound(f"rollout {rollout_id!r}: no such rollout in {self.path}")
            conn.execute(
                "INSERT INTO requests (rollout_id, action, requested_at) VALUES (?,?,?) "
                "ON CONFLICT(rollout_id) DO UPDATE SET action=excluded.action, "
                "requested_at=excluded.requested_at",
                (rollout_id, action, _now()),
            )
            for t in targets:
                self._event(
                    conn, rollout_id, t["service"], t["environment"], "-", t["step"], "requested", action
                )

    def requested(self, rollout_id: str) -> str | None:
        with self._connect() as conn:
            row = conn.execute("SELECT action FROM requests WHERE rollout_id=?", (rollout_id,)).fetchone()
        return str(row["action"]) if row is not None else None

    def clear_request(self, rollout_id: str, action: str) -> None:
        """Forget the request once acted on (only if it is still `action`: a newer one stays)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM requests WHERE rollout_id=? AND action=?", (rollout_id, action))

    def status(self, rollout_id: str) -> RolloutStatus:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM rollouts WHERE rollout_id=? ORDER BY created_at, service", (rollout_id,)
            ).fetchall()
        if not rows:
            raise RolloutNotFound(f"rollout {rollout_id!r}: no such rollout in {self.path}")
        return RolloutStatus(
            rollout_id=rollout_id,
            requested=self.requested(rollout_id),
            targets=[_record(r) for r in rows],
            events=self.events(rollout_id),
        )

    def list_rollouts(self, active_only: bool = False) -> list[RolloutRecord]:
        """Every target of every rollout, newest first (active only: not promoted, rolled back or aborted)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM rollouts ORDER BY updated_at DESC").fetchall()
        records = [_record(r) for r in rows]
        return [r for r in records if r.phase not in FINAL_PHASES] if active_only else records
