"""Incremental mining gives the tables of a full re-mine: after new commits, after a force-push, and
after a run killed at any point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features.mining.gitlog import Repository
from features.settings import load_settings
from features.tables import read_table
from pipelines.mine import mine_repository
from tests.conftest import DAY, T0, clone, git


def _tables(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(directory / "commits.parquet"), pd.read_parquet(directory / "files.parquet")


def _assert_same_tables(a: Path, b: Path) -> None:
    for left, right in zip(_tables(a), _tables(b), strict=True):
        assert_frame_equal(left, right)


def test_second_run_mines_only_new_commits_and_equals_full_mine(click_repo, tmp_path):
    repo = clone(click_repo, tmp_path / "click")
    settings = load_settings(data_dir=tmp_path / "data")
    git(repo, "reset", "-q", "--hard", "main~300")
    first = mine_repository(repo, settings, tmp_path / "inc")
    git(repo, "reset", "-q", "--hard", "origin/main")
    second = mine_repository(repo, settings, tmp_path / "inc")
    full = mine_repository(repo, settings, tmp_path / "full")
    # Only the new commits, plus the few that merged branches dated before them (those are recomputed
    # so that every commit's history is the same as in a full run).
    assert second.commits_new == full.commits_total - first.commits_total
    assert second.commits_new <= second.commits_mined < second.commits_new + 20
    _assert_same_tables(tmp_path / "inc", tmp_path / "full")
    again = mine_repository(repo, settings, tmp_path / "inc")
    assert again.commits_mined == 0


def test_force_push_drops_vanished_commits_with_a_warning(click_repo, tmp_path):
    repo = clone(click_repo, tmp_path / "click")
    settings = load_settings(data_dir=tmp_path / "data")
    mine_repository(repo, settings, tmp_path / "inc")
    old_head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "reset", "-q", "--hard", "HEAD~40")
    (repo / "NEW.txt").write_text("rewritten history\n")
    git(repo, "add", "NEW.txt")
    stamp = {
        "GIT_AUTHOR_DATE": f"@{T0 + 2000 * DAY} +0000",
        "GIT_COMMITTER_DATE": f"@{T0 + 2000 * DAY} +0000",
    }
    git(repo, "-c", "user.name=R", "-c", "user.email=r@x.org", "commit", "-q", "-m", "Rewrite", env=stamp)
    result = mine_repository(repo, settings, tmp_path / "inc")
    assert result.dropped > 0 and result.warnings and "rewritten" in result.warnings[0]
    commits, files = _tables(tmp_path / "inc")
    assert old_head not in set(commits["sha"])
    assert set(files["sha"]) <= set(commits["sha"])
    mine_repository(repo, settings, tmp_path / "full")
    _assert_same_tables(tmp_path / "inc", tmp_path / "full")


@pytest.mark.slow
def test_killed_runs_resume_without_loss_or_duplicates(small_world, tmp_path):
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "AWO_CONFIG"}
    env.update({"AWO_DATA_DIR": str(tmp_path / "data"), "AWO_CHECKPOINT_SECONDS": "0.05"})
    command = [sys.executable, "-m", "pipelines", "--verbose", "mine", str(small_world.repo)]
    command += ["--data", str(out)]
    saved = []
    for _ in range(3):
        # Each run is killed right after it logs a checkpoint: never before one, never after the end.
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "pipelines.mine: checkpoint:" in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
        commits = read_table(out / "commits.parquet")  # as the next run sees it (recovering a torn write)
        assert commits is not None
        saved.append(len(commits))
    assert 0 < saved[0] < saved[1] < saved[2] < 600  # every killed run kept its progress
    final = subprocess.run(command, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert f"mined {600 - saved[2]} of 600 commits" in final.stdout  # resumed, not started over
    mine_repository(small_world.repo, load_settings(data_dir=tmp_path / "data"), tmp_path / "full")
    _assert_same_tables(out, tmp_path / "full")
    assert not list(out.glob(".tmp-*"))


def test_parallel_workers_give_the_same_tables(small_world, tmp_path, monkeypatch):
    diff_processes: list[tuple[int, int]] = []  # (thread, commits) of each `git log` that diffs
    start_log = Repository._start_log

    def spy(self, shas, *options):
        if not options:  # the diff log of stream_commits (messages and patches pass their own options)
            diff_processes.append((threading.get_ident(), len(shas)))
        return start_log(self, shas, *options)

    monkeypatch.setattr(Repository, "_start_log", spy)
    settings = load_settings(data_dir=tmp_path / "data")
    mine_repository(small_world.repo, settings, tmp_path / "one", workers=1)
    assert diff_processes == [(threading.get_ident(), 600)]
    diff_processes.clear()
    mine_repository(small_world.repo, settings, tmp_path / "four", workers=4)
    assert sorted(n for _, n in diff_processes) == [150, 150, 150, 150]  # four git processes, one per chunk
    assert threading.get_ident() not in {thread for thread, _ in diff_processes}  # run by the pool
    _assert_same_tables(tmp_path / "one", tmp_path / "four")


def test_force_push_that_only_removes_commits_drops_their_rows(tiny_repo, tmp_path):
    settings = load_settings(data_dir=tmp_path / "data")
    shas = []
    for i in range(4):
        tiny_repo.lines(f"src/m{i}.py", 3 + i)
        shas.append(tiny_repo.commit(f"Add m{i}", at=T0 + i * DAY))
    mine_repository(tiny_repo.path, settings, tmp_path / "t")
    git(tiny_repo.path, "reset", "-q", "--hard", shas[1])
    result = mine_repository(tiny_repo.path, settings, tmp_path / "t")
    commits, files = _tables(tmp_path / "t")
    assert result.dropped == 2 and list(commits["sha"]) == shas[:2]
    assert set(files["sha"]) == set(shas[:2])
    graph = pd.read_parquet(tmp_path / "t" / "graph.parquet")
    assert set(graph["sha"]) == set(shas[:2])


def test_a_merge_of_mined_commits_updates_the_graph(tiny_repo, tmp_path):
    settings = load_settings(data_dir=tmp_path / "data")
    tiny_repo.lines("src/a.py", 3)
    tiny_repo.commit("Add a", at=T0)
    git(tiny_repo.path, "checkout", "-q", "-b", "topic")
    tiny_repo.lines("src/b.py", 3)
    topic = tiny_repo.commit("Add b", at=T0 + DAY)
    git(tiny_repo.path, "checkout", "-q", "main")
    tiny_repo.lines("src/c.py", 3)
    tiny_repo.commit("Add c", at=T0 + 2 * DAY)
    mine_repository(tiny_repo.path, settings, tmp_path / "t", branch="main")
    mine_repository(tiny_repo.path, settings, tmp_path / "topic", branch="topic")
    env = {"GIT_AUTHOR_DATE": f"@{T0 + 3 * DAY} +0000", "GIT_COMMITTER_DATE": f"@{T0 + 3 * DAY} +0000"}
    who = ["-c", "user.name=A", "-c", "user.email=a@x.org"]
    git(tiny_repo.path, *who, "merge", "-q", "--no-ff", "-m", "Merge", topic, env=env)
    result = mine_repository(tiny_repo.path, settings, tmp_path / "t", branch="main")
    assert result.commits_new == 1  # the topic commit; the merge itself is not a row
    graph = pd.read_parquet(tmp_path / "t" / "graph.parquet")
    merge = git(tiny_repo.path, "rev-parse", "main").strip()
    assert merge in set(graph["sha"]) and len(graph) == 4
