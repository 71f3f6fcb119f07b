"""The diffs table of `awo mine` (each commit's added and removed lines and its message) and the
change_risk_v2 feature service built on it: rows equal git's own diff, resumed mines equal full ones, the
store serves the code point-in-time offline and as lists online, and unmined changes carry it too."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features.history import CHANGE_RISK_V1, CHANGE_RISK_V2
from features.mining.gitlog import LOCK_FILES
from features.settings import load_settings
from features.tables import CODE_COLUMNS, DIFF_MAX_CHARS, DIFF_MAX_LINES
from pipelines.mine import mine_repository
from tests.conftest import DAY, T0, clone, git


def _diffs(directory) -> pd.DataFrame:
    return pd.read_parquet(directory / "diffs.parquet")


def _git_show_lines(repo, sha: str) -> tuple[list[str], list[str]]:
    """Added and removed lines of `sha` read from `git show -U0` the plain way: +/- lines inside hunks."""
    out = git(repo, "show", "--format=", "-M", "-U0", "--no-color", "--src-prefix=a/", "--dst-prefix=b/", sha)
    added, removed, in_hunk, skipped = [], [], False, False
    for line in out.split("\n"):
        if line.startswith("diff --git "):
            in_hunk, skipped = False, line.rsplit("/", 1)[-1] in LOCK_FILES
        elif line.startswith("@@ "):
            in_hunk = True
        elif in_hunk and not skipped and line.startswith("+"):
            added.append(line[1:][:DIFF_MAX_CHARS])
        elif in_hunk and not skipped and line.startswith("-"):
            removed.append(line[1:][:DIFF_MAX_CHARS])
    return added, removed


def test_diff_table_has_one_row_per_mined_commit_in_the_same_order(mined_click):
    commits, _, out = mined_click
    diffs = _diffs(out)
    assert list(diffs["sha"]) == list(commits["sha"]) and list(diffs["seq"]) == list(commits["seq"])
    assert (diffs["committed_at"] == commits["committed_at"]).all()
    assert (diffs["added_lines"].map(len) == diffs["added_where"].map(len)).all()
    assert diffs["added_lines"].map(len).max() <= DIFF_MAX_LINES
    assert diffs["removed_lines"].map(len).max() <= DIFF_MAX_LINES


def test_line_counts_equal_git_numstat_of_every_untruncated_commit(mined_click):
    _, files, out = mined_click
    diffs = _diffs(out).set_index("sha")
    counted = files[~files["path"].str.rsplit("/", n=1).str[-1].isin(LOCK_FILES)]
    la = counted.groupby("sha")["la"].sum().reindex(diffs.index, fill_value=0)
    ld = counted.groupby("sha")["ld"].sum().reindex(diffs.index, fill_value=0)
    whole = diffs[~diffs["truncated"]]
    assert len(whole) > 0.95 * len(diffs)
    added, removed = whole["added_lines"].map(len), whole["removed_lines"].map(len)
    # git's zero-context diff aligns a few edits differently from numstat's (7817ae6 of click: 11 added
    # and 12 removed lines with -U0, 12 and 13 in numstat), but never the net change of a file's length.
    assert (added - removed == la[whole.index] - ld[whole.index]).all()
    assert ((added == la[whole.index]) & (removed == ld[whole.index])).mean() > 0.99


def test_rows_match_git_show_and_each_added_line_is_where_it_says(mined_click, click_repo):
    _, _, out = mined_click
    diffs = _diffs(out)
    sample = diffs[~diffs["truncated"] & (diffs["added_lines"].map(len) > 0)].sample(12, random_state=4)
    for row in sample.itertuples():
        added, removed = _git_show_lines(click_repo, row.sha)
        assert list(row.added_lines) == added, row.sha
        assert list(row.removed_lines) == removed, row.sha
        assert row.message == git(click_repo, "log", "-1", "--format=%B", row.sha).strip()
        texts: dict[str, list[str]] = {}
        for line, where in zip(row.added_lines, row.added_where, strict=True):
            path, number = where.rsplit(":", 1)
            if path not in texts:
                texts[path] = git(click_repo, "show", f"{row.sha}:{path}").split("\n")
            assert texts[path][int(number) - 1] == line, (row.sha, where)


def test_caps_lock_files_binaries_and_odd_names(tiny_repo, tmp_path):
    tiny_repo.write("big.py", "".join(f"{i:05d}{'x' * 400}\n" for i in range(DIFF_MAX_LINES + 100)))
    tiny_repo.write("package-lock.json", "{}\n" * 50)
    tiny_repo.write("logo.png", bytes(range(256)) * 4)
    tiny_repo.write("dir with space/é.py", "first\n++ looks like a header\n")
    first = tiny_repo.commit("Add files\n\nWith a body.", at=T0)
    tiny_repo.write("dir with space/é.py", "first\n--- looks like a header too\n")
    second = tiny_repo.commit("Change a line", at=T0 + DAY)
    mine_repository(tiny_repo.path, load_settings(data_dir=tmp_path / "data"), tmp_path / "t")
    diffs = _diffs(tmp_path / "t").set_index("sha")
    big = diffs.loc[first]
    assert big["truncated"] and big["message"] == "Add files\n\nWith a body."
    assert len(big["added_lines"]) == DIFF_MAX_LINES  # big.py's first lines, then nothing past the cap
    assert all(len(line) == DIFF_MAX_CHARS for line in big["added_lines"])
    assert not any(w.startswith(("package-lock.json", "logo.png")) for w in big["added_where"])
    assert list(big["added_where"][:2]) == ["big.py:1", "big.py:2"]
    small = diffs.loc[second]
    assert not small["truncated"]
    assert list(small["added_lines"]) == ["--- looks like a header too"]
    assert list(small["added_where"]) == ["dir with space/é.py:2"]
    assert list(small["removed_lines"]) == ["++ looks like a header"]


def test_incremental_and_interrupted_mines_give_the_diff_table_of_a_full_mine(
    mined_click, click_repo, tmp_path
):
    _, _, full = mined_click
    repo = clone(click_repo, tmp_path / "click")
    settings = load_settings(data_dir=tmp_path / "data").model_copy(update={"checkpoint_seconds": 0.3})
    git(repo, "reset", "-q", "--hard", "main~300")
    mine_repository(repo, settings, tmp_path / "inc")
    git(repo, "reset", "-q", "--hard", "origin/main")

    class Killed(Exception):
        pass

    def kill_late(done: int, total: int) -> None:
        if done in (100, total - 40):
            time.sleep(0.4)  # past checkpoint_seconds: the next commit writes a checkpoint (at any speed)
        if done == total - 20:
            raise Killed

    with pytest.raises(Killed):  # the run stops after at least one checkpoint of the new commits
        mine_repository(repo, settings, tmp_path / "inc", on_progress=kill_late)
    saved = _diffs(tmp_path / "inc")
    assert len(pd.read_parquet(tmp_path / "inc" / "commits.parquet")) == len(saved)
    resumed = mine_repository(repo, settings, tmp_path / "inc")
    assert 0 < resumed.commits_mined < 300
    assert_frame_equal(_diffs(tmp_path / "inc"), _diffs(full))


def test_tables_mined_before_the_diff_table_are_mined_again_once(tiny_repo, tmp_path):
    tiny_repo.lines("a.py", 3)
    tiny_repo.commit("One", at=T0)
    tiny_repo.lines("a.py", 5)
    tiny_repo.commit("Two", at=T0 + DAY)
    settings = load_settings(data_dir=tmp_path / "data")
    mine_repository(tiny_repo.path, settings, tmp_path / "t")
    before = _diffs(tmp_path / "t")
    (tmp_path / "t" / "diffs.parquet").unlink()
    again = mine_repository(tiny_repo.path, settings, tmp_path / "t")
    assert again.commits_mined == 2 and "diffs.parquet is missing" in again.warnings[0]
    assert_frame_equal(_diffs(tmp_path / "t"), before)
    assert mine_repository(tiny_repo.path, settings, tmp_path / "t").commits_mined == 0


@pytest.fixture(scope="module")
def built_v2(tmp_path_factory):
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    root = tmp_path_factory.mktemp("code-store")
    world = generate_world(root / "world", seed=5, n_commits=150)
    settings = load_settings(data_dir=root / "data")
    tables = root / "data" / "demo"
    store = prepare(world.repo, settings, tables, name="demo", delivery=world.repo.parent)
    commits = pd.read_parquet(tables / "commits.parquet").sort_values("seq")
    return store, commits, _diffs(tables).set_index("sha"), world.repo, settings, tables


def test_the_miner_caps_and_names_the_code_as_the_tokenizer_reads_it():
    from features import code_tokens

    # Training reads diffs.parquet, serving reads an unmined change: both must be cut as the model's
    # tokenizer cuts them, or the same commit would score differently mined and unmined.
    assert CODE_COLUMNS == code_tokens.CODE_COLUMNS
    assert (DIFF_MAX_LINES, DIFF_MAX_CHARS) == (code_tokens.MAX_LINES, code_tokens.MAX_LINE_CHARS)


def test_change_risk_v2_is_v1_then_the_code_columns_and_v1_is_unchanged(built_v2):
    from features.store import feature_names

    store = built_v2[0]
    assert feature_names(store, "change_risk_v1") == list(CHANGE_RISK_V1)
    assert (*CHANGE_RISK_V1, *CODE_COLUMNS) == CHANGE_RISK_V2
    assert feature_names(store, "change_risk_v2") == [*CHANGE_RISK_V2, "added_where"]


def test_training_set_gives_the_code_of_a_commit_only_from_its_time_on(built_v2):
    from features.store import training_set

    store, commits, diffs, *_ = built_v2
    sample = commits.iloc[10:150:10]
    entities = pd.concat(
        [
            sample[["repo", "sha"]].assign(event_timestamp=sample["committed_at"]),
            sample[["repo", "sha"]].assign(event_timestamp=sample["committed_at"] - pd.Timedelta(seconds=1)),
        ],
        ignore_index=True,
    )
    got = training_set(store, entities, "change_risk_v2")
    on_time = got[got["event_timestamp"].isin(set(sample["committed_at"]))].set_index("sha")
    for sha in sample["sha"]:
        row = on_time.loc[sha]
        assert row["added_lines"] == list(diffs.loc[sha, "added_lines"])
        assert row["removed_lines"] == list(diffs.loc[sha, "removed_lines"])
        assert row["added_where"] == list(diffs.loc[sha, "added_where"])
        assert row["message"] == diffs.loc[sha, "message"] and isinstance(row["message"], str)
    # Feast's point-in-time join leaves out an entity row with no feature row at or before its time: a
    # second before each commit, neither its code nor its metrics are known.
    assert len(got) == len(sample)
    early = entities.iloc[len(sample) :]  # each commit's time minus a second
    assert len(early) == len(sample) and training_set(store, early, "change_risk_v2").empty
    v1 = training_set(store, entities, "change_risk_v1")
    assert list(v1.columns) == [c for c in got.columns if c not in (*CODE_COLUMNS, "added_where")]
    assert_frame_equal(v1.set_index("sha").sort_index(), got[list(v1.columns)].set_index("sha").sort_index())


def test_online_v2_returns_lists_and_the_message_beside_the_v1_values(built_v2):
    from features.store import online_features

    store, commits, diffs, *_ = built_v2
    latest = commits.tail(8)
    rows = [{"repo": r, "sha": s} for r, s in zip(latest["repo"], latest["sha"], strict=True)]
    v2 = online_features(store, "change_risk_v2", [*rows, {"repo": "demo", "sha": "0" * 40}])
    v1 = online_features(store, "change_risk_v1", rows)
    for sha, row, old in zip(latest["sha"], v2.rows[:-1], v1.rows, strict=True):
        assert list(row) == [*CHANGE_RISK_V2, "added_where"]
        assert {k: row[k] for k in CHANGE_RISK_V1} == old
        for name in ("added_lines", "removed_lines", "added_where"):
            assert isinstance(row[name], list) and row[name] == list(diffs.loc[sha, name])
        assert row["message"] == diffs.loc[sha, "message"]
    assert all(v is None for v in v2.rows[-1].values()) and "no features" in v2.warnings[-1]


def test_an_unmined_change_carries_the_code_of_its_range(built_v2, tmp_path):
    from features.mining.diff import measure_unmined_change

    _, _, _, repo, settings, tables = built_v2
    work = clone(repo, tmp_path / "pr")
    git(work, "checkout", "-q", "-b", "feature")
    target = work / "README.md"
    text = target.read_text()
    assert text.endswith("\n")
    original = text.splitlines()
    target.write_text("\n".join(["# Changed title", *original[1:], "a new last line"]) + "\n")
    author = ["-c", "user.name=Pat", "-c", "user.email=pat@example.org"]
    git(work, *author, "commit", "-q", "-am", "Retitle the readme")
    (work / "notes.txt").write_text("one\n")
    git(work, "add", "notes.txt")
    git(work, *author, "commit", "-q", "-m", "Add notes")
    change = measure_unmined_change(work, "main", "feature", settings, tables, name="demo")
    assert change.message == "Add notes\n\nRetitle the readme"
    assert change.removed_lines == (original[0],)
    assert change.added_lines == ("# Changed title", "a new last line", "one")
    assert change.added_where == ("README.md:1", f"README.md:{len(original) + 1}", "notes.txt:1")
    vector = change.vector_v2
    assert list(vector) == [*CHANGE_RISK_V2, "added_where"]
    assert vector["added_lines"] == ["# Changed title", "a new last line", "one"]
    assert {k: vector[k] for k in CHANGE_RISK_V1} == change.vector
