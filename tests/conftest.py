"""Shared test factories: tiny git repositories written commit by commit, the real click history, a
small demo world, and one `awo demo` run shared by the demo's and the notebooks' tests."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from features.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CLICK_BUNDLE = SHARED / "repos" / "pallets-click.bundle"
T0 = 1_600_000_000  # 2020-09-13, a fixed point for hand-computed expectations
DAY = 86_400


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers the tests start, or to
    point a client at a closed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(cwd: Path, *args: str, env: dict | None = None, check: bool = True) -> str:
    full_env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", **(env or {})}
    proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=check)
    return proc.stdout


class TinyRepo:
    """A git repository the test writes commit by commit, with chosen authors and dates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")

    def write(self, relpath: str, content: str | bytes) -> None:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    def lines(self, relpath: str, n: int, tag: str = "line") -> None:
        self.write(relpath, "".join(f"{tag}_{i} = compute({i})\n" for i in range(n)))

    def rm(self, relpath: str) -> None:
        git(self.path, "rm", "-q", relpath)

    def mv(self, old: str, new: str) -> None:
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        git(self.path, "mv", old, new)

    def commit(
        self, message: str, author: tuple[str, str] = ("Alice", "alice@example.org"), at: int = T0
    ) -> str:
        git(self.path, "add", "-A")
        stamp = f"@{at} +0000"
        env = {
            "GIT_AUTHOR_NAME": author[0],
            "GIT_AUTHOR_EMAIL": author[1],
            "GIT_COMMITTER_NAME": author[0],
            "GIT_COMMITTER_EMAIL": author[1],
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_DATE": stamp,
        }
        git(self.path, "commit", "-q", "--allow-empty", "-m", message, env=env)
        return git(self.path, "rev-parse", "HEAD").strip()


@pytest.fixture
def tiny_repo(tmp_path: Path) -> TinyRepo:
    return TinyRepo(tmp_path / "repo")


@pytest.fixture(scope="session")
def click_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CLICK_BUNDLE.exists():
        pytest.skip(f"real history not available: {CLICK_BUNDLE} is missing")
    target = tmp_path_factory.mktemp("click") / "click"
    git(target.parent, "clone", "-q", "-b", "main", str(CLICK_BUNDLE), str(target))
    return target


def clone(source: Path, target: Path) -> Path:
    git(source.parent, "clone", "-q", "--no-local", str(source), str(target))
    return target


@pytest.fixture
def settings(tmp_path: Path):
    from features.settings import load_settings

    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def mined_click(click_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    import pandas as pd

    from features.settings import load_settings
    from pipelines.mine import mine_repository

    out = tmp_path_factory.mktemp("click-tables")
    mine_repository(click_repo, load_settings(data_dir=out), out)
    return pd.read_parquet(out / "commits.parquet"), pd.read_parquet(out / "files.parquet"), out


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory):
    from pipelines.demo_world import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), seed=11, n_commits=600)


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


DEMO_SEED = 11


@dataclass(frozen=True)
class DemoRun:
    """A finished `awo demo` run: its settings (data root), its `demo/` folder and what it printed."""

    settings: Settings
    root: Path
    output: str

    def audit(self) -> list[dict[str, Any]]:
        from agents.audit import AuditLog

        log = AuditLog(self.settings.data_dir / "audit", self.settings.audit_secret.get_secret_value())
        assert log.verify().ok
        return list(log.records())

    def rollout_id(self) -> str:
        """The rollout of the canary with the error spike, as step 11 of the demo names it."""
        found = re.search(
            r"^11\. rollback recorded: audit log \d+ records of rollout (\w+)", self.output, re.M
        )
        assert found, self.output
        return found.group(1)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """`awo demo --quick` on a 250-commit world (a low cold-start threshold keeps its models
    within-project), built once per test session for the demo's and the notebooks' tests. `make test`
    runs each test file on one worker (`--dist loadfile`), and the two files may land on different ones,
    so workers take a file lock in the session's shared temp folder: the first builds, the others wait and
    read the same root (the tests only read it)."""
    import fcntl

    from typer.testing import CliRunner

    from features.settings import load_settings
    from pipelines.cli import app

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # <session>/popen-gwN under xdist
    data, printed = shared / "demo-run" / "data", shared / "demo-run" / "output.txt"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWO_DATA_DIR", str(data))
        env.setenv("AWO_MIN_POSITIVE_LABELS", "10")
        env.delenv("AWO_RISK_API_URL", raising=False)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        with (shared / "demo-run.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not printed.is_file():
                args = ["demo", "--commits", "250", "--seed", str(DEMO_SEED), "--top", "10", "--quick"]
                result = CliRunner().invoke(app, args)
                assert result.exit_code == 0, result.output
                printed.write_text(result.output)
        run = DemoRun(load_settings(), data / "demo", printed.read_text())
    yield run  # outside the environment above: the rest of the worker's session must not see the demo's
