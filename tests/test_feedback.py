"""The feedback loop: the paused and aborted outcomes, agents.feedback's writes (validated, one row per key,
no row lost to a concurrent writer, never a torn file), and a rollback recorded today becoming a failed
deployment in the next deploy-failure training set without changing any earlier training row."""

from __future__ import annotations

import csv
import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from agents.feedback import record_deployment, record_incident
from features.delivery import DeploymentRow
from features.errors import BadTable
from features.settings import load_settings
from features.tables import feedback_file
from pipelines.ingest import ingest_file

ROOT = Path(__file__).resolve().parents[1]
SHA = "b" * 40
OLD_FILE = (  # a deployments file in the vocabulary before paused and aborted existed
    "deploy_id,service,environment,sha,started_at,finished_at,strategy,outcome\n"
    f"d1,pay,production,{SHA},2024-01-01T10:00:00Z,2024-01-01T10:10:00Z,canary,succeeded\n"
    f"d2,pay,production,{SHA},2024-01-02T10:00:00Z,2024-01-02T10:10:00Z,rolling,failed\n"
    f"d3,pay,production,{SHA},2024-01-03T10:00:00Z,2024-01-03T10:10:00Z,blue-green,rolled-back\n"
    f"d4,pay,staging,{SHA},2024-01-04T10:00:00Z,,recreate,cancelled\n"
    f"d5,pay,staging,{SHA},2024-01-05T10:00:00Z,,full,Succeeded\n"
)


def _deployment(deploy_id: str, outcome: str, finished: str | None = "2024-02-01T10:20:00Z", **kw) -> dict:
    return {"deploy_id": deploy_id, "service": "pay", "environment": "production", "sha": SHA,
            "started_at": "2024-02-01T10:00:00Z", "finished_at": finished, "strategy": "canary",
            "outcome": outcome, **kw}  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# --- the vocabulary ----------------------------------------------------------------------------------


def test_files_of_the_old_vocabulary_still_ingest_whole_and_label_as_before(tmp_path):
    settings = load_settings(data_dir=tmp_path / "data")
    path = tmp_path / "deployments.csv"
    path.write_text(OLD_FILE)
    result = ingest_file("deployments", path, settings, tmp_path / "t")
    assert not result.rejects and result.stored == 5 and result.unfinished_deployments == 0
    labelled = pd.read_parquet(tmp_path / "t" / "deployments.parquet").set_index("deploy_id")
    assert labelled["failed"].to_dict() == {"d1": False, "d2": True, "d3": True, "d4": False, "d5": False}
    assert labelled.loc["d3", "failure_reason"] == "outcome rolled-back"


def test_aborted_is_a_failure_and_paused_is_not_finished():
    assert DeploymentRow.model_validate(_deployment("d1", "Aborted")).outcome == "aborted"
    assert DeploymentRow.model_validate(_deployment("d2", "paused", finished=None)).finished_at is None
    with pytest.raises(ValueError, match="finished_at is set but outcome paused is not finished"):
        DeploymentRow.model_validate(_deployment("d3", "paused"))
    with pytest.raises(ValueError, match="outcome"):
        DeploymentRow.model_validate(_deployment("d4", "promoted"))


def test_a_paused_deployment_is_no_label_until_its_final_outcome_replaces_it(tmp_path):
    settings = load_settings(data_dir=tmp_path / "data")
    tables = tmp_path / "t"
    path = feedback_file(settings.data_dir, "deployments")
    record_deployment(settings.data_dir, _deployment("d1", "succeeded"))
    record_deployment(settings.data_dir, _deployment("d2", "paused", finished=None))
    result = ingest_file("deployments", path, settings, tables)
    assert result.stored == 2 and result.deployments == 1 and result.unfinished_deployments == 1
    assert "1 paused deployments are not labelled" in result.warnings[-1]
    assert list(pd.read_parquet(tables / "deployments.parquet")["deploy_id"]) == ["d1"]
    assert set(pd.read_parquet(tables / "raw_deployments.parquet")["deploy_id"]) == {"d1", "d2"}

    record_deployment(settings.data_dir, _deployment("d2", "aborted"))
    result = ingest_file("deployments", path, settings, tables)
    assert result.stored == 2 and result.unfinished_deployments == 0
    labelled = pd.read_parquet(tables / "deployments.parquet").set_index("deploy_id")
    assert labelled.loc["d2", "failed"] and labelled.loc["d2", "failure_reason"] == "outcome aborted"
    assert not labelled.loc["d1", "failed"]


# --- agents.feedback's writes ------------------------------------------------------------------------


def test_recording_the_same_deployment_twice_leaves_one_row_and_a_new_outcome_replaces_it(tmp_path):
    first = record_deployment(tmp_path, _deployment("d1", "paused", finished=None))
    again = record_deployment(tmp_path, _deployment("d1", "paused", finished=None))
    final = record_deployment(tmp_path, _deployment("d1", "rolled-back"))
    assert (first.written, first.replaced) == (True, False)
    assert (again.written, again.replaced) == (False, False)
    assert (final.written, final.replaced) == (True, True)
    rows = _rows(first.path)
    assert first.path == tmp_path / "feedback" / "deployments.csv"
    assert [(r["deploy_id"], r["outcome"], r["finished_at"]) for r in rows] == [
        ("d1", "rolled-back", "2024-02-01T10:20:00Z")
    ]
    assert final.row == rows[0]


def test_an_incident_is_validated_and_its_summary_kept_to_one_short_line(tmp_path):
    evidence = "canary failed: error_rate 2.1x baseline (p=0.001)\n" + "latency p99 " * 100
    recorded = record_incident(
        tmp_path,
        {"incident_id": "awo-p1-t3", "service": "pay", "severity": "SEV2",
         "started_at": "2024-02-01T10:20:00Z", "deploy_id": "d1", "summary": evidence},
    )  # fmt: skip
    (row,) = _rows(tmp_path / "feedback" / "incidents.csv")
    assert row == recorded.row and row["severity"] == "high" and row["resolved_at"] == ""
    assert "\n" not in row["summary"] and len(row["summary"]) == 300 and row["summary"].endswith("…")
    assert row["summary"].startswith("canary failed: error_rate 2.1x baseline (p=0.001) latency p99")
    with pytest.raises(BadTable, match=r"incidents.csv: incidents row not recorded: field severity"):
        record_incident(tmp_path, {"incident_id": "i2", "service": "pay", "severity": "urgent",
                                   "started_at": "2024-02-01T10:20:00Z"})  # fmt: skip
    assert len(_rows(tmp_path / "feedback" / "incidents.csv")) == 1


WRITER = """
import sys
from pathlib import Path
from agents.feedback import record_deployment
root, prefix, n, sha = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
for i in range(n):
    record_deployment(root, {"deploy_id": f"{prefix}-{i}", "service": "pay", "environment": "production",
        "sha": sha, "started_at": "2024-02-01T10:00:00Z", "finished_at": None, "strategy": "canary",
        "outcome": "succeeded"})
    print(i, flush=True)
"""


def _writer(root: Path, prefix: str, n: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), prefix, str(n), SHA],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_writers_lose_no_row(tmp_path):
    writers = [_writer(tmp_path, "a", 60), _writer(tmp_path, "b", 60)]
    for writer in writers:
        writer.communicate(timeout=120)
        assert writer.returncode == 0
    ids = [r["deploy_id"] for r in _rows(tmp_path / "feedback" / "deployments.csv")]
    assert sorted(ids) == sorted([f"a-{i}" for i in range(60)] + [f"b-{i}" for i in range(60)])


def test_a_writer_killed_mid_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "feedback" / "deployments.csv"
    for delay in (0.5, 0.8, 1.1):
        writer = _writer(tmp_path, f"k{delay}", 100_000)
        assert writer.stdout is not None
        writer.stdout.readline()  # it has written once
        seen = 0
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:  # a reader never sees a half-written file either
            rows = _rows(path)
            assert all(DeploymentRow.model_validate(r) for r in rows[-3:]) and len(rows) >= seen
            seen = len(rows)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        acknowledged = len(writer.stdout.read().split()) + 1
        rows = [r for r in _rows(path) if r["deploy_id"].startswith(f"k{delay}-")]
        assert len(rows) in (acknowledged, acknowledged + 1)
        for row in rows:
            DeploymentRow.model_validate(row)
    record_deployment(tmp_path, _deployment("after", "succeeded"))  # the next write cleans up
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")] == []


# --- the key property: a rollback recorded today is a label at the next retrain, and only there --------


@pytest.fixture(scope="module")
def retrained_world(small_world, tmp_path_factory):
    """The deploy-failure training set of a small demo world, then again after agents recorded a rollback
    and a paused rollout of new production deployments dated now."""
    from features.store import open_store
    from pipelines.flow import prepare
    from pipelines.train import training_data

    root = tmp_path_factory.mktemp("feedback-world")
    repo = shutil.copytree(small_world.repo, root / "repo")
    settings = load_settings(data_dir=root / "data")
    tables = root / "data" / "demo"
    delivery = small_world.repo.parent
    prepare(repo, settings, tables, name="demo", delivery=delivery)
    before = training_data("deploy-failure", settings, tables, open_store(settings)).frame

    history = pd.read_csv(delivery / "deployments.csv")
    last = history.iloc[-1]
    now = pd.Timestamp.now(tz="UTC").floor("s")
    assert now > pd.Timestamp(history["started_at"].max())
    new = {"service": last["service"], "environment": "production", "sha": last["sha"], "strategy": "canary"}
    record_deployment(settings.data_dir, {**new, "deploy_id": "awo-rollback", "started_at": now,
                                          "finished_at": now + pd.Timedelta(minutes=12),
                                          "outcome": "rolled-back"})  # fmt: skip
    later = now + pd.Timedelta(minutes=30)
    record_deployment(settings.data_dir, {**new, "deploy_id": "awo-paused", "started_at": later,
                                          "outcome": "paused"})  # fmt: skip
    prepare(repo, settings, tables, name="demo", delivery=delivery)
    after = training_data("deploy-failure", settings, tables, open_store(settings)).frame
    return before, after, tables


def test_a_rollback_recorded_today_is_a_failed_deployment_in_the_next_training_set(retrained_world):
    before, after, tables = retrained_world
    assert "awo-rollback" not in set(before["deploy_id"])
    (row,) = after[after["deploy_id"] == "awo-rollback"].itertuples()
    assert row.label == 1 and row.failed
    labelled = pd.read_parquet(tables / "deployments.parquet").set_index("deploy_id")
    assert labelled.loc["awo-rollback", "failure_reason"] == "outcome rolled-back"
    assert len(after) == len(before) + 1


def test_the_recorded_outcome_leaks_into_no_earlier_training_row(retrained_world):
    before, after, _ = retrained_world
    earlier = after[after["deploy_id"].isin(set(before["deploy_id"]))]
    key = ["deploy_id"]
    pd.testing.assert_frame_equal(
        before.sort_values(key).reset_index(drop=True), earlier.sort_values(key).reset_index(drop=True)
    )
    assert before["label"].sum() > 0  # the history has failures of its own to leak into


def test_a_paused_rollout_is_in_no_training_set_until_it_finishes(retrained_world):
    _, after, tables = retrained_world
    assert "awo-paused" not in set(after["deploy_id"])
    assert "awo-paused" in set(pd.read_parquet(tables / "raw_deployments.parquet")["deploy_id"])
