"""The prediction log off the request path: what is queued, what a clean shutdown and a hard crash keep,
and what a full queue does — against a real SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from serving.predictions import PredictionLog

ROOT = Path(__file__).resolve().parents[1]


def _row(i: int) -> dict:
    return {
        "kind": "commit",
        "repo": "demo",
        "sha": f"{i:040x}",
        "model_name": "change-risk",
        "model_version": "1",
        "probability": 0.5,
        "band": "medium",
        "features": {"la": i},
    }


def _count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM predictions").fetchone()[0]


def test_a_clean_close_writes_every_queued_row(tmp_path):
    path = tmp_path / "predictions.db"
    predictions = PredictionLog(path, flush_seconds=3600)
    for i in range(1200):
        assert predictions.record([_row(i)])
    predictions.close()
    assert _count(path) == 1200


def test_recording_does_not_wait_for_a_database_locked_by_another_writer(tmp_path):
    path = tmp_path / "predictions.db"
    predictions = PredictionLog(path, flush_seconds=0.01)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    started = datetime.now(UTC)
    for i in range(100):
        assert predictions.record([_row(i)])
    assert datetime.now(UTC) - started < timedelta(seconds=1)
    blocker.execute("COMMIT")
    predictions.close()
    assert _count(path) == 100


def test_a_full_queue_drops_new_rows_and_counts_them(tmp_path):
    dropped: list[int] = []
    predictions = PredictionLog(
        tmp_path / "predictions.db", capacity=3, batch_rows=1000, flush_seconds=3600, on_drop=dropped.append
    )
    assert predictions.record([_row(0), _row(1)])
    assert not predictions.record([_row(2), _row(3)])  # would exceed 3: the whole response is dropped
    assert predictions.record([_row(4)])
    assert predictions.dropped == 2 and dropped == [2]
    predictions.close()
    assert _count(tmp_path / "predictions.db") == 3


def test_the_drift_query_sees_rows_still_queued(tmp_path):
    predictions = PredictionLog(tmp_path / "predictions.db", flush_seconds=3600)
    predictions.record([_row(i) for i in range(5)])
    scores, features = predictions.since("change-risk", datetime.now(UTC) - timedelta(hours=1))
    assert len(scores) == 5 and features[4] == {"la": 4}
    predictions.close()


def test_a_hard_crash_loses_only_the_rows_queued_since_the_last_write(tmp_path):
    path = tmp_path / "predictions.db"
    # A worker that writes 300 rows, queues 40 more and is killed before its next write (os._exit: no
    # lifespan end, no atexit, no finally) — as SIGKILL or a power cut would.
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from serving.predictions import PredictionLog
        from tests.test_predictions import _row
        log = PredictionLog(Path({str(path)!r}), flush_seconds=3600)
        log.record([_row(i) for i in range(300)])
        log.flush()
        log.record([_row(i) for i in range(300, 340)])
        os._exit(9)
        """
    )
    crashed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert crashed.returncode == 9
    assert _count(path) == 300
