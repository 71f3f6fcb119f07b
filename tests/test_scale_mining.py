"""An organisation's repositories mined and labelled on a real Ray cluster (a head and a worker node): the
tables equal a local run's row for row, also after a killed worker node or a killed driver, and a bad
repository fails alone."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from pipelines.org import discover, is_organisation
from tests.conftest import git

pytest_plugins = ["tests.ray_cluster"]

AWO = str(Path(sys.executable).with_name("awo"))
REPOS = ("alpha", "beta", "click")
MINED = {"commits.parquet": ["sha"], "files.parquet": ["sha", "path"], "diffs.parquet": ["sha"]}
MINED["graph.parquet"] = ["sha"]
LABELLED = {"commits.parquet": ["sha"], "szz_candidates.parquet": ["fix_sha", "candidate_sha"]}


def _env(data_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWO_CONFIG"}
    env.update({"AWO_DATA_DIR": str(data_root), "RAY_USAGE_STATS_ENABLED": "0", **extra})
    return env


def _awo(args: list[str], data_root: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AWO, *args], env=_env(data_root, **extra), capture_output=True, text=True, timeout=300
    )


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _assert_same_tables(a: Path, b: Path, tables: dict[str, list[str]], repos=REPOS) -> None:
    for repo in repos:
        for table, keys in tables.items():
            left = _sorted(pd.read_parquet(a / repo / table), keys)
            right = _sorted(pd.read_parquet(b / repo / table), keys)
            assert len(left) > 0, f"{repo}/{table} is empty"
            assert_frame_equal(left, right, obj=f"{repo}/{table}")


def _mined_lines(stdout: str) -> dict[str, tuple[int, int, int]]:
    """repo -> (mined, total, new) from the per-repository lines of `awo mine`."""
    found = re.findall(r"^(\w+): mined (\d+) of (\d+) commits \((\d+) new\)", stdout, re.MULTILINE)
    return {name: (int(m), int(t), int(n)) for name, m, t, n in found}


@pytest.fixture(scope="module", autouse=True)
def _ray_without_token_auth():
    """Ray 2.60 turns token authentication on once ~/.ray/auth_token exists (any local `ray.init()` writes
    it), and the test cluster's nodes and drivers then disagree on the token; these clusters are private."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield


@pytest.fixture(scope="module")
def org(tmp_path_factory, click_repo) -> Path:
    """org/{alpha,beta,click} (two generated worlds and the real click history) beside notes/ (no
    repository), and org.txt listing the three by relative path. Returns the folder holding both."""
    from pipelines.demo_world import generate_world

    root = tmp_path_factory.mktemp("org")
    (root / "org" / "notes").mkdir(parents=True)
    for name, seed, n in (("alpha", 3, 500), ("beta", 5, 600)):
        generate_world(root / "worlds" / name, seed=seed, n_commits=n)
        shutil.move(root / "worlds" / name / "repo", root / "org" / name)
    git(root, "clone", "-q", str(click_repo), str(root / "org" / "click"))
    (root / "org.txt").write_text("# the organisation\norg/alpha\norg/beta  # generated\n\norg/click\n")
    return root


@pytest.fixture(scope="module")
def local_root(org) -> Path:
    """The organisation mined without Ray (in one process, one repository after another)."""
    data = org / "local"
    run = _awo(["mine", str(org / "org")], data)
    assert run.returncode == 0, run.stderr
    assert "3 repositories in this process" in run.stdout
    assert "skipped 1 entries" in run.stderr and "notes" in run.stderr
    return data


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    # Ray gives a starting node 30 s to register; on a loaded machine (2 cores shared by several test runs)
    # a worker node may miss that and exit, or join late.
    for attempt in range(3):
        try:
            ray_cluster.add_worker(num_cpus=1)
            return ray_cluster
        except TimeoutError:
            if ray_cluster.nodes[-1].poll() is None:
                ray_cluster.wait_for_nodes(2, timeout_s=300)
                return ray_cluster
            if attempt == 2:
                raise
    return ray_cluster


def test_a_list_file_names_repositories_relative_to_its_folder(org):
    found = discover(org / "org.txt")
    assert [(r.name, r.path) for r in found.repos] == [(n, (org / "org" / n).resolve()) for n in REPOS]
    assert is_organisation(org / "org.txt") and is_organisation(org / "org")
    assert not is_organisation(org / "org" / "click") and not is_organisation(org / "org" / "notes")


def test_a_folder_skips_and_lists_what_is_not_a_repository(org):
    found = discover(org / "org")
    assert [r.name for r in found.repos] == list(REPOS)
    assert found.skipped == [org / "org" / "notes"]


def test_two_repositories_of_one_name_are_an_error_naming_both(org, tmp_path):
    other = tmp_path / "elsewhere" / "alpha"
    shutil.copytree(org / "org" / "alpha", other, symlinks=True)
    listing = tmp_path / "repos.txt"
    listing.write_text(f"{org / 'org' / 'alpha'}\n{other}\n")
    run = _awo(["mine", str(listing)], tmp_path / "data")
    assert run.returncode == 2
    assert "two repositories are named 'alpha'" in run.stderr
    assert str(other) in run.stderr and str(org / "org" / "alpha") in run.stderr
    assert not (tmp_path / "data").exists()


def test_a_list_naming_a_non_repository_is_one_line_naming_the_line(org, tmp_path):
    listing = tmp_path / "repos.txt"
    listing.write_text("org/alpha\n")  # relative to tmp_path, where there is none
    run = _awo(["mine", str(listing)], tmp_path / "data")
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "repos.txt, line 1" in run.stderr and "not a git repository" in run.stderr


def test_three_repositories_mined_on_ray_equal_a_local_run(org, local_root, cluster):
    ray_root = org / "ray"
    run = _awo(["mine", str(org / "org.txt"), "--ray", cluster.address], ray_root)
    assert run.returncode == 0, run.stderr
    assert f"3 repositories on Ray ({cluster.address})" in run.stdout
    mined = _mined_lines(run.stdout)
    assert set(mined) == set(REPOS) and all(m == t == n for m, t, n in mined.values())
    _assert_same_tables(ray_root, local_root, MINED)
    again = _awo(["mine", str(org / "org.txt"), "--ray", cluster.address], ray_root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": up to date at ") == 3


def test_labels_on_ray_equal_local_labels(org, local_root, cluster):
    ray_root = org / "ray"  # mined on Ray by the test before
    local_labelled = org / "local-labelled"
    shutil.copytree(local_root, local_labelled)
    local = _awo(["label", str(org / "org")], local_labelled)
    assert local.returncode == 0, local.stderr
    on_ray = _awo(["label", str(org / "org.txt"), "--ray", cluster.address], ray_root)
    assert on_ray.returncode == 0, on_ray.stderr
    assert len(re.findall(r"^\w+: labelled \d+ commits: [1-9]\d* bug-inducing", on_ray.stdout, re.M)) == 3
    _assert_same_tables(ray_root, local_labelled, LABELLED)


def test_a_bad_repository_fails_alone_and_is_named(org, tmp_path, cluster):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    listing = tmp_path / "repos.txt"
    listing.write_text(f"{org / 'org' / 'alpha'}\n{empty}\n{org / 'org' / 'beta'}\n")
    run = _awo(["mine", str(listing), "--ray", cluster.address], tmp_path / "data")
    assert run.returncode == 2
    assert "has no commits" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "error: 1 of 3 repositories failed: empty"
    assert set(_mined_lines(run.stdout)) == {"alpha", "beta"}
    _assert_same_tables(tmp_path / "data", org / "local", MINED, repos=("alpha", "beta"))


class _Run:
    """`awo mine` on the cluster in a child process, its stdout read as it comes."""

    def __init__(self, org: Path, data_root: Path, address: str) -> None:
        self.lines: list[str] = []
        self.stderr = data_root.with_name(data_root.name + ".stderr")
        self.process = subprocess.Popen(
            [AWO, "mine", str(org / "org.txt"), "--ray", address],
            env=_env(data_root, AWO_CHECKPOINT_SECONDS="0.2"),
            stdout=subprocess.PIPE,
            stderr=self.stderr.open("w"),
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_until_running_with_checkpoints(
        self, data_root: Path, running: int, timeout_s: float = 180
    ) -> None:
        """Until `running` repositories have a partial table (a checkpoint) while a task holds their job lock
        (it is still mining them: a finished repository's lock is free even before the driver reports it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = _locked_inodes()
            mining = [
                r
                for r in REPOS
                if (data_root / r / "commits.parquet").exists()
                and (data_root / r / ".lock").exists()
                and (data_root / r / ".lock").stat().st_ino in held
            ]
            if len(mining) >= running:
                return
            assert self.process.poll() is None, "the run ended before the kill"
            time.sleep(0.02)
        raise TimeoutError("no checkpoint to kill after")


def _locked_inodes() -> set[int]:
    """Inodes of the files some process holds a flock on, read from /proc/locks (without taking a lock that
    a starting task would then find held)."""
    inodes = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[-3].count(":") == 2:
            inodes.add(int(fields[-3].rsplit(":", 1)[1]))
    return inodes


def _wait_for_locks(data_root: Path, timeout_s: float = 90) -> None:
    """Until no process holds a repository's job lock (a dead driver's tasks die a moment after it)."""
    deadline = time.monotonic() + timeout_s
    for repo in REPOS:
        lock_file = data_root / repo / ".lock"
        if not lock_file.exists():
            continue
        with open(lock_file, "w") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(lock, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, f"{lock_file} still held"
                    time.sleep(0.2)


def test_a_killed_driver_loses_nothing_and_the_rerun_mines_only_what_is_missing(org, local_root, cluster):
    data_root = org / "killed-driver"
    run = _Run(org, data_root, cluster.address)
    run.wait_until_running_with_checkpoints(data_root, running=1)
    os.kill(run.process.pid, signal.SIGKILL)
    run.process.wait(timeout=30)
    _wait_for_locks(data_root)
    saved = {
        r: len(pd.read_parquet(data_root / r / "commits.parquet"))
        if (data_root / r / "commits.parquet").exists()
        else 0
        for r in REPOS
    }
    totals = {r: len(pd.read_parquet(local_root / r / "commits.parquet")) for r in REPOS}
    assert any(0 < saved[r] < totals[r] for r in REPOS), (saved, totals)
    rerun = _awo(["mine", str(org / "org.txt"), "--ray", cluster.address], data_root)
    assert rerun.returncode == 0, rerun.stderr
    mined = _mined_lines(rerun.stdout)
    for repo in REPOS:
        if saved[repo] == totals[repo]:
            assert f"{repo}: up to date" in rerun.stdout
        else:
            assert mined[repo][1:] == (totals[repo], totals[repo] - saved[repo]), (repo, saved, mined)
    _assert_same_tables(data_root, local_root, MINED)


def test_a_killed_worker_node_is_replaced_and_the_run_completes_with_equal_tables(org, local_root, cluster):
    data_root = org / "killed-worker"
    run = _Run(org, data_root, cluster.address)
    # Both nodes run a repository, each past a checkpoint: killing the worker node kills one mid-run.
    run.wait_until_running_with_checkpoints(data_root, running=2)
    cluster.kill_node(len(cluster.nodes) - 1)
    assert run.process.wait(timeout=240) == 0, run.stderr.read_text()
    run.reader.join(timeout=10)
    stdout = "".join(run.lines)
    assert "3 repositories on Ray" in stdout and "0 failed" in stdout
    assert set(_mined_lines(stdout)) == set(REPOS)
    # The killed node's task ran again on the head and resumed from its checkpoint: that repository's line
    # reports fewer commits mined than it has (the rest were kept from the tables), and nothing is lost or
    # doubled.
    resumed = {name: mined for name, (mined, total, _) in _mined_lines(stdout).items() if mined < total}
    assert len(resumed) == 1, stdout
    _assert_same_tables(data_root, local_root, MINED)
