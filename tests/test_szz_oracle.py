"""awo's SZZ on real fixes of the developer-informed oracle (Rosa et al., ICSE 2021) in ../shared/data/szz,
and the fallback rule that finds the bug-inducing commit of fixes whose source files give no candidate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from features.mining.gitlog import Repository
from features.mining.szz import (
    DEFAULT_STRATEGIES,
    fix_inducing,
    only_moves,
    parse_insertion_points,
    parse_regions,
    topological_seq,
    widen,
)
from tests.conftest import DAY, T0

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "szz"
# (repository, fix): the developers named the bug-inducing commit; the last two need the fallback
# (a test-only fix; a space added inside a string literal).
KNOWN = [
    ("obormot/python-awis", "307a0f14cb"),
    ("snarfed/ownyourcheckin", "da71e0ad62"),
    ("fmarier/browserid-tools", "f0a04d16e2"),
    ("jantman/versionfinder", "cdc0645899"),
    ("fau-fablab/kastenwesen", "8738da4321"),
]
NEEDS_FALLBACK = {"jantman/versionfinder", "fau-fablab/kastenwesen"}


@pytest.mark.skipif(not (ORACLE / "oracle.json").exists(), reason=f"the SZZ oracle is not at {ORACLE}")
@pytest.mark.parametrize(("repo", "fix_prefix"), KNOWN)
def test_szz_finds_the_commit_the_developers_named(repo, fix_prefix, tmp_path):
    fix = next(f for f in json.loads((ORACLE / "oracle.json").read_text()) if f["repo"] == repo)
    assert fix["fix_commit"].startswith(fix_prefix)
    path = tmp_path / "clone"
    bundle = ORACLE / "repos" / fix["bundle"]
    subprocess.run(["git", "clone", "-q", "-b", fix["branch"], str(bundle), str(path)], check=True)
    seq = topological_seq(Repository(path), fix["fix_commit"])
    found = fix_inducing(Repository(path), fix["fix_commit"], seq, DEFAULT_STRATEGIES)
    assert found == fix["bug_inducing_commits"]
    without_fallback = fix_inducing(Repository(path), fix["fix_commit"], seq, ("r-szz",))
    assert (without_fallback == []) == (repo in NEEDS_FALLBACK)


def test_fix_that_changes_only_a_test_blames_the_commit_that_wrote_the_test_line(tiny_repo):
    tiny_repo.write("shop/cart.py", "def total(a, b):\n    return a + b\n")
    tiny_repo.write("tests/test_cart.py", "def test_total():\n    assert total(1, 2) == 3\n")
    tiny_repo.commit("Add cart", at=T0)
    tiny_repo.write("tests/test_cart.py", "def test_total():\n    assert total(1, 2) == 4\n")
    culprit = tiny_repo.commit("Check more totals", at=T0 + DAY)
    tiny_repo.write("tests/test_cart.py", "def test_total():\n    assert total(1, 2) == 3\n")
    fix = tiny_repo.commit("Fix broken test", at=T0 + 2 * DAY)
    seq = topological_seq(Repository(tiny_repo.path), fix)
    assert fix_inducing(Repository(tiny_repo.path), fix, seq, DEFAULT_STRATEGIES) == [culprit]
    assert fix_inducing(Repository(tiny_repo.path), fix, seq, ("r-szz",)) == []


def test_space_added_inside_a_string_blames_the_commit_that_wrote_the_string(tiny_repo):
    tiny_repo.write("run.py", 'CMD = "docker run"\n')
    tiny_repo.commit("Add run", at=T0)
    tiny_repo.write("run.py", 'CMD = "docker run" \\\n    "--rm"\n')
    culprit = tiny_repo.commit("Remove containers on exit", at=T0 + DAY)
    tiny_repo.write("run.py", 'CMD = "docker run" \\\n    " --rm"\n')
    fix = tiny_repo.commit("Fix missing space", at=T0 + 2 * DAY)
    seq = topological_seq(Repository(tiny_repo.path), fix)
    assert fix_inducing(Repository(tiny_repo.path), fix, seq, DEFAULT_STRATEGIES) == [culprit]
    assert fix_inducing(Repository(tiny_repo.path), fix, seq, ("r-szz",)) == []


def test_fix_with_a_source_candidate_does_not_blame_its_test_changes(tiny_repo):
    tiny_repo.write("shop/cart.py", "def total(a, b):\n    return a + b\n")
    tiny_repo.write("tests/test_cart.py", "def test_total():\n    assert total(1, 2) == 3\n")
    tiny_repo.commit("Add cart", at=T0)
    tiny_repo.write("shop/cart.py", "def total(a, b):\n    return a - b\n")
    culprit = tiny_repo.commit("Refine total", at=T0 + DAY)
    tiny_repo.write("tests/test_cart.py", "def test_total():\n    assert total(1, 2) == 5\n")
    tiny_repo.commit("More checks", at=T0 + 2 * DAY)
    tiny_repo.write("shop/cart.py", "def total(a, b):\n    return a + b\n")
    tiny_repo.write("tests/test_cart.py", "def test_total():\n    assert total(1, 2) == 3\n")
    fix = tiny_repo.commit("Fix total", at=T0 + 3 * DAY)
    seq = topological_seq(Repository(tiny_repo.path), fix)
    assert fix_inducing(Repository(tiny_repo.path), fix, seq, DEFAULT_STRATEGIES) == [culprit]


def test_reindented_fix_still_blames_nothing(tiny_repo):
    tiny_repo.write("shop/cart.py", "def total(a, b):\n    return a + b\n")
    tiny_repo.commit("Add cart", at=T0)
    tiny_repo.write("shop/cart.py", "def total(a, b):\n        return a + b\n")
    fix = tiny_repo.commit("Fix indentation", at=T0 + DAY)
    seq = topological_seq(Repository(tiny_repo.path), fix)
    assert fix_inducing(Repository(tiny_repo.path), fix, seq, DEFAULT_STRATEGIES) == []


def test_insertion_points_are_the_old_lines_around_each_added_block():
    patch = (
        "diff --git a/m.py b/m.py\nindex 1..2 100644\n--- a/m.py\n+++ b/m.py\n"
        "@@ -4,0 +5,2 @@ def f():\n+    check()\n+    log()\n@@ -9 +11 @@\n-    x = 1\n+    x = 2\n"
    )
    assert [(r.path, r.lines) for r in parse_insertion_points("f", patch)] == [("m.py", (4, 5))]


def test_regions_are_the_old_lines_of_each_hunk_and_say_whether_code_changed():
    patch = (
        "diff --git a/m.py b/m.py\nindex 1..2 100644\n--- a/m.py\n+++ b/m.py\n"
        "@@ -4,0 +5,1 @@ def f():\n+    # note\n@@ -9,2 +10 @@\n-    x = 1\n-    y = 2\n+    x = 2\n"
    )
    regions = [(r.path, r.start, r.end, r.meaningful) for r in parse_regions("f", patch)]
    assert regions == [("m.py", 4, 5, False), ("m.py", 9, 10, True)]
    assert widen(1, 2, 4) == (1, 4) and widen(9, 10, 100) == (6, 13) and widen(1, 1, 0) is None


def test_a_line_written_elsewhere_and_moved_is_a_move_a_new_line_is_not():
    assert only_moves(["    return a + b", "# moved"], {"returna+b"})
    assert not only_moves(["    return a + b", "    check()"], {"returna+b"})
    assert not only_moves(["", "# comment"], set())


def test_line_history_blames_the_commit_that_changed_the_code_around_the_fixed_line(tiny_repo):
    tiny_repo.write("app.py", "import os\n\ndef run(cmd):\n    log(cmd)\n    return call(cmd)\n")
    tiny_repo.commit("Add run", at=T0)
    tiny_repo.write(
        "app.py", "import os\n\ndef run(cmd):\n    log(cmd)\n    cmd = wrap(cmd)\n    return call(cmd)\n"
    )
    culprit = tiny_repo.commit("Wrap commands", at=T0 + DAY)
    tiny_repo.write(
        "app.py",
        "import os\n\ndef run(cmd):\n    log(cmd)\n    cmd = wrap(cmd)\n    return call(cmd, shell=False)\n",
    )
    fix = tiny_repo.commit("Fix call", at=T0 + 2 * DAY)
    seq = topological_seq(Repository(tiny_repo.path), fix)
    repository = Repository(tiny_repo.path)
    assert fix_inducing(repository, fix, seq, ("fallback", "line-history")) == [culprit]
    assert fix_inducing(repository, fix, seq, DEFAULT_STRATEGIES) != [culprit]  # blame: "Add run"
