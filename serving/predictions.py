"""The prediction log (`<data root>/predictions.db`, SQLite in WAL mode, safe for several workers): every
score served, for the feedback loop to join with outcomes later, and the drift of today's scores and
top features against the training distribution (population stability index).

Scores are written off the request path: `record` appends to a bounded in-memory queue and returns; a
background thread writes the queue in batches, one transaction each, every `flush_seconds` (sooner when a
batch fills), and `close` (the app's lifespan end) writes what is left. So a response never waits on
SQLite. What can be lost: a clean shutdown loses nothing; a hard crash (SIGKILL, power loss) loses the
rows queued since the last write — at most `flush_seconds` of traffic, never more than `capacity` rows.
A full queue (SQLite slower than the traffic for long) drops the new rows rather than blocking the
response, counted in `awo_prediction_log_dropped_total` and logged: losing a few drift samples is
cheaper than stalling every caller behind a disk."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation import psi, reference  # noqa: F401 - re-exported for the routes

log = logging.getLogger("awo.api")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    at TEXT NOT NULL, kind TEXT NOT NULL, repo TEXT, sha TEXT, service TEXT,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, probability REAL NOT NULL, band TEXT NOT NULL,
    features TEXT
);
CREATE INDEX IF NOT EXISTS predictions_at ON predictions (model_name, at);
"""


class PredictionLog:
    """Scores queued in memory and written to SQLite in batches by a thread of its own."""

    def __init__(
        self,
        path: Path,
        capacity: int = 10_000,
        batch_rows: int = 500,
        flush_seconds: float = 0.5,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.capacity, self.batch_rows, self.flush_seconds = capacity, batch_rows, flush_seconds
        self.dropped = 0
        self._on_drop = on_drop
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._queued = threading.Condition()
        # Held while a batch is taken off the queue and written: a flush returns only once every row
        # recorded before it is in the database, whoever wrote it.
        self._writing = threading.Lock()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="prediction-log", daemon=True)
        self._writer.start()

    def record(self, rows: list[dict[str, Any]]) -> bool:
        """Queue the rows of one response; False (and counted) when the queue is full or closed."""
        if not rows:
            return True
        at = datetime.now(UTC).isoformat()
        with self._queued:
            if self._closed or len(self._pending) + len(rows) > self.capacity:
                self.dropped += len(rows)
                full = not self._closed
            else:
                self._pending.extend((at, r) for r in rows)
                if len(self._pending) >= self.batch_rows:
                    self._queued.notify()
                return True
        if self._on_drop is not None:
            self._on_drop(len(rows))
        log.warning(
            "prediction log %s; %d rows dropped (%d in all)",
            "queue full" if full else "closed",
            len(rows),
            self.dropped,
        )
        return False

    def flush(self) -> int:
        """Write every queued row now; the number written."""
        with self._writing:
            with self._queued:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            values = [
                (
                    at,
                    r["kind"],
                    r.get("repo"),
                    r.get("sha"),
                    r.get("service"),
                    r["model_name"],
                    r["model_version"],
                    r["probability"],
                    r["band"],
                    json.dumps(r.get("features") or {}),
                )
                for at, r in batch
            ]
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?)", values)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return len(values)

    def close(self) -> None:
        """Stop the writer and write what is left (a clean shutdown loses nothing)."""
        with self._queued:
            self._closed = True
            self._queued.notify()
        self._writer.join(timeout=60)
        self.flush()

    def _write_loop(self) -> None:
        while True:
            with self._queued:
                if not self._closed and len(self._pending) < self.batch_rows:
                    self._queued.wait(self.flush_seconds)
                closed = self._closed
            # The thread's top level: a failed write (a disk full, a lock held past the timeout) loses
            # that batch, says so, and the next batch is tried as usual.
            try:
                self.flush()
            except Exception:
                log.exception("prediction log write failed; that batch is lost")
            if closed:
                return

    def since(self, model_name: str, start: datetime) -> tuple[np.ndarray, list[dict]]:
        self.flush()  # the drift report counts what was served up to now, queued or not
        with self._writing:
            rows = self._db.execute(
                "SELECT probability, features FROM predictions WHERE model_name = ? AND at >= ?",
                (model_name, start.isoformat()),
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=float), [json.loads(r[1] or "{}") for r in rows]
