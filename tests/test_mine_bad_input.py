"""Bad input: a one-line error naming the problem, a non-zero exit, and no damage to existing tables."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import TinyRepo, git

runner = CliRunner()


def _mine(*args: str):
    return runner.invoke(app, ["mine", *map(str, args)])


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for word in words:
        assert word in lines[0]


@pytest.fixture
def existing_tables(tiny_repo, tmp_path):
    tiny_repo.lines("src/a.py", 5)
    tiny_repo.commit("Add a")
    out = tmp_path / "tables"
    assert _mine(tiny_repo.path, "--data", out).exit_code == 0
    return out, {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.parquet")}


def _unchanged(existing) -> bool:
    out, digests = existing
    return digests == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.parquet")}


def test_path_that_is_not_a_repository(tmp_path, existing_tables):
    (tmp_path / "plain").mkdir()
    _one_line_error(_mine(tmp_path / "plain", "--data", existing_tables[0]), "not a git repository", "plain")
    _one_line_error(_mine(tmp_path / "missing", "--data", existing_tables[0]), "does not exist")
    assert _unchanged(existing_tables)


def test_empty_repository(tmp_path, existing_tables):
    (tmp_path / "empty").mkdir()
    git(tmp_path / "empty", "init", "-q")
    _one_line_error(_mine(tmp_path / "empty", "--data", existing_tables[0]), "has no commits")
    assert _unchanged(existing_tables)


def test_missing_branch(tiny_repo, existing_tables):
    _one_line_error(_mine(tiny_repo.path, "--branch", "nope", "--data", existing_tables[0]), "'nope'", "main")
    assert _unchanged(existing_tables)


def test_shallow_clone(tiny_repo, tmp_path, existing_tables):
    tiny_repo.lines("src/b.py", 3)
    tiny_repo.commit("Add b")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{tiny_repo.path}", str(shallow))
    _one_line_error(_mine(shallow, "--data", existing_tables[0]), "shallow clone", "unshallow")
    assert _unchanged(existing_tables)


def test_unreadable_objects(tmp_path, existing_tables):
    broken = TinyRepo(tmp_path / "broken")
    broken.lines("src/a.py", 6, "other")
    broken.commit("Add a")
    blob = git(broken.path, "rev-parse", "HEAD:src/a.py").strip()
    loose = broken.path / ".git" / "objects" / blob[:2] / blob[2:]
    loose.chmod(0o644)
    loose.write_bytes(b"not a zlib stream")
    result = _mine(broken.path, "--name", "repo", "--data", existing_tables[0])
    _one_line_error(result, "broken", "git log failed", blob)
    assert _unchanged(existing_tables)


def test_bad_service_map_names_the_file(tiny_repo, tmp_path):
    bad = tmp_path / "services.yaml"
    bad.write_text("services: [not, a, mapping]\n")
    tiny_repo.lines("src/a.py", 3)
    tiny_repo.commit("Add a")
    _one_line_error(_mine(tiny_repo.path, "--service-map", bad, "--data", tmp_path / "t"), str(bad))
