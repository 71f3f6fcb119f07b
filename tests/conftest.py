"""Shared test factories: tiny git repositories written commit by commit, the real click history, and
a small demo world."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

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
