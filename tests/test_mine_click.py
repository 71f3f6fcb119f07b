"""Mining the real click history: completeness, numstat agreement and no future information."""

from __future__ import annotations

import pandas as pd

from tests.conftest import git


def test_one_row_per_non_merge_commit(mined_click, click_repo):
    commits, _, _ = mined_click
    expected = int(git(click_repo, "rev-list", "--no-merges", "--count", "main"))
    assert len(commits) == expected
    assert commits["sha"].is_unique
    assert list(commits["seq"]) == list(range(expected))


def test_size_metrics_equal_git_numstat_of_every_commit(mined_click, click_repo):
    commits, files, _ = mined_click
    # The same numbers `git show --numstat SHA` prints, for every commit in one call.
    out = git(click_repo, "log", "--no-merges", "--numstat", "-M", "--format=@%H", "main")
    expected: dict[str, list[int]] = {}
    sha = ""
    for line in out.splitlines():
        if line.startswith("@"):
            sha = line[1:]
            expected[sha] = [0, 0, 0]
        elif line.strip():
            added, deleted, _ = line.split("\t", 2)
            expected[sha][0] += 0 if added == "-" else int(added)
            expected[sha][1] += 0 if deleted == "-" else int(deleted)
            expected[sha][2] += 1
    got = commits.set_index("sha")[["la", "ld", "nf"]]
    want = pd.DataFrame.from_dict(expected, orient="index", columns=["la", "ld", "nf"])
    mismatched = (got.loc[want.index] != want).any(axis=1)
    assert not mismatched.any(), got.loc[want.index][mismatched].head()
    per_file = files.groupby("sha")[["la", "ld"]].sum()
    assert (per_file.loc[want.index[want["nf"] > 0]] == want.loc[want["nf"] > 0, ["la", "ld"]]).all().all()


def test_experience_counts_only_earlier_commits_of_the_author(mined_click):
    commits, _, _ = mined_click
    humans = commits[~commits["is_bot"]].sort_values("seq")
    earlier = humans.groupby("author_id").cumcount()
    assert (humans["exp"] == earlier).all()
    assert (commits.loc[commits["is_bot"], ["exp", "rexp", "sexp"]] == 0).all().all()
    assert ((humans["rexp"] <= humans["exp"]) & (humans["sexp"] <= humans["exp"])).all()


def test_history_metrics_never_look_past_the_commit(mined_click):
    commits, _, _ = mined_click
    ordered = commits.sort_values("seq").reset_index(drop=True)
    # Point-in-time order is never against time.
    assert ordered["history_at"].is_monotonic_increasing
    assert (ordered["history_at"] >= ordered["committed_at"]).all()
    first = ordered["history_at"].iloc[0]
    age_limit = (ordered["history_at"] - first).dt.total_seconds() / 86_400
    assert (ordered["age"] <= age_limit + 1e-6).all()
    # ndev can only count developers who committed before.
    developers_so_far = (~ordered["author_id"].duplicated() & ~ordered["is_bot"]).cumsum().shift(fill_value=0)
    assert (ordered["ndev"] <= developers_so_far).all()
    assert (ordered["nuc"] <= ordered.index).all()
    # The first change of a file has no history.
    assert ordered.loc[0, ["ndev", "nuc", "age", "lt", "exp"]].eq(0).all()


def test_fix_commits_and_change_kinds_are_plausible(mined_click):
    commits, files, _ = mined_click
    share = commits["is_fix"].mean()
    assert 0.1 < share < 0.4  # click's README: about 600 subjects of 3,329 mention fix or bug
    assert set(commits["change_kind"]) <= {"fix", "feature", "refactor", "docs", "test", "chore"}
    tests = files[files["path"].str.startswith("tests/")]
    assert tests["is_test"].all()
    assert files.loc[
        files["path"].str.startswith("docs/") & files["path"].str.endswith(".rst"), "is_docs"
    ].all()
