"""The prediction log (`<data root>/predictions.db`, SQLite in WAL mode, safe for several workers): every
score served, for the feedback loop to join with outcomes later, and the drift of today's scores and
top features against the training distribution (population stability index)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.evaluation import psi, reference  # noqa: F401 - re-exported for the routes

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    at TEXT NOT NULL, kind TEXT NOT NULL, repo TEXT, sha TEXT, service TEXT,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, probability REAL NOT NULL, band TEXT NOT NULL,
    features TEXT
);
CREATE INDEX IF NOT EXISTS predictions_at ON predictions (model_name, at);
"""


class PredictionLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def record(self, rows: list[dict]) -> None:
        if not rows:
            return
        at = datetime.now(UTC).isoformat()
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
            for r in rows
        ]
        with self._lock:
            self._db.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?)", values)

    def since(self, model_name: str, start: datetime) -> tuple[np.ndarray, list[dict]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT probability, features FROM predictions WHERE model_name = ? AND at >= ?",
                (model_name, start.isoformat()),
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=float), [json.loads(r[1] or "{}") for r in rows]
