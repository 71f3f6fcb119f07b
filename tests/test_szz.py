"""SZZ on small repositories built by the test, and label quality on the demo world against its truth."""

from __future__ import annotations

import pandas as pd
import pytest

from features.labels import Candidate, FixFailure, label_commits, label_quality, select_inducing
from features.settings import load_settings
from pipelines.label import audit_fix, label_repository
from pipelines.mine import mine_repository
from tests.conftest import DAY, T0

ALICE = ("Alice", "alice@example.org")
BOB = ("Bob", "bob@example.org")
BODY = [f"    total_{i} = price_{i} * quantity_{i} + shipping({i})\n" for i in range(12)]


def _write(repo, lines):
    repo.write("shop/cart.py", "def cart():\n" + "".join(lines))


def _label(repo, tmp_path, **kwargs):
    settings = load_settings(data_dir=tmp_path / "data")
    out = tmp_path / "tables"
    mine_repository(repo.path, settings, out)
    label_repository(repo.path, settings, out, maturity_days=kwargs.pop("maturity_days", 0), **kwargs)
    return pd.read_parquet(out / "commits.parquet").set_index("sha"), out


def test_fix_that_modifies_a_line_blames_the_commit_that_wrote_it(tiny_repo, tmp_path):
    _write(tiny_repo, BODY)
    base = tiny_repo.commit("Add cart", ALICE, T0)
    bad = [*BODY[:5], "    total_5 = price_5 * quantity_5 - shipping(5)\n", *BODY[6:]]
    _write(tiny_repo, bad)
    culprit = tiny_repo.commit("Tweak shipping", BOB, T0 + DAY)
    _write(tiny_repo, [*bad, "    extra = 1\n"])
    other = tiny_repo.commit("Add extra", ALICE, T0 + 2 * DAY)
    _write(tiny_repo, [*BODY, "    extra = 1\n"])
    fix = tiny_repo.commit("Fix wrong shipping sign", ALICE, T0 + 3 * DAY)
    labels, _ = _label(tiny_repo, tmp_path)
    assert labels.loc[culprit, "bug_inducing"]
    assert list(labels.loc[culprit, "fixed_by"]) == [fix]
    assert labels.loc[culprit, "fix_delay_days"] == pytest.approx(2.0)
    assert not labels.loc[base, "bug_inducing"] and not labels.loc[other, "bug_inducing"]


def test_fix_that_only_deletes_blames_the_deleted_lines(tiny_repo, tmp_path):
    _write(tiny_repo, BODY)
    tiny_repo.commit("Add cart", ALICE, T0)
    _write(tiny_repo, [*BODY, "    debug_dump(cart_state, verbose=True)\n"])
    culprit = tiny_repo.commit("Add dump", BOB, T0 + DAY)
    _write(tiny_repo, BODY)
    tiny_repo.commit("Fix crash: remove dump", ALICE, T0 + 2 * DAY)
    labels, _ = _label(tiny_repo, tmp_path)
    assert labels.loc[culprit, "bug_inducing"]


def test_whitespace_and_comment_only_fix_blames_nothing(tiny_repo, tmp_path):
    _write(tiny_repo, [*BODY, "    # keep totals in cents\n"])
    base = tiny_repo.commit("Add cart", ALICE, T0)
    reindented = [line.replace("    ", "        ", 1) for line in BODY]
    _write(tiny_repo, [*reindented, "    # totals are in cents\n"])
    fix = tiny_repo.commit("Fix indentation", BOB, T0 + DAY)
    labels, out = _label(tiny_repo, tmp_path)
    assert not labels["bug_inducing"].any()
    assert audit_fix(tiny_repo.path, out, fix[:10], None).empty
    assert base in labels.index


def test_line_moved_by_a_refactor_is_traced_to_its_author_not_the_refactor(tiny_repo, tmp_path):
    helpers = [
        f"def helper_{i}(order):\n    return order.total_{i} * rate_table[{i}] + fee_{i}\n" for i in range(6)
    ]
    tiny_repo.write("shop/cart.py", "".join(BODY))
    tiny_repo.write("shop/pricing.py", "".join(helpers))
    tiny_repo.commit("Add cart and pricing", ALICE, T0)
    buggy = helpers.copy()
    buggy[2] = "def helper_2(order):\n    return order.total_2 * rate_table[2] - fee_2\n"
    tiny_repo.write("shop/pricing.py", "".join(buggy))
    culprit = tiny_repo.commit("Change fee handling", BOB, T0 + DAY)
    # Refactor: the helpers move, unchanged, from pricing.py into cart.py.
    tiny_repo.write("shop/cart.py", "".join(BODY) + "".join(buggy))
    tiny_repo.write("shop/pricing.py", "")
    refactor = tiny_repo.commit("Refactor: move pricing helpers into cart", ALICE, T0 + 2 * DAY)
    tiny_repo.write("shop/cart.py", "".join(BODY) + "".join(helpers))
    fix = tiny_repo.commit("Fix fee sign in helper_2", ALICE, T0 + 3 * DAY)
    labels, out = _label(tiny_repo, tmp_path)
    assert labels.loc[culprit, "bug_inducing"]
    assert not labels.loc[refactor, "bug_inducing"]
    audit = audit_fix(tiny_repo.path, out, fix, None)
    assert audit["verdict"].str.startswith("kept").sum() == 1
    assert audit.loc[audit["verdict"].str.startswith("kept"), "candidate"].iloc[0] == culprit[:12]


def test_issue_date_filter_drops_candidates_newer_than_the_issue(tiny_repo, tmp_path):
    _write(tiny_repo, BODY)
    tiny_repo.commit("Add cart", ALICE, T0)
    first = [*BODY[:3], "    total_3 = price_3 * quantity_3 - shipping(3)\n", *BODY[4:]]
    _write(tiny_repo, first)
    old_culprit = tiny_repo.commit("Change 3", BOB, T0 + DAY)
    second = [*first[:8], "    total_8 = price_8 * quantity_8 - shipping(8)\n", *first[9:]]
    _write(tiny_repo, second)
    newer = tiny_repo.commit("Change 8", BOB, T0 + 10 * DAY)
    _write(tiny_repo, BODY)
    tiny_repo.commit("Fix shipping sign, closes #42", ALICE, T0 + 20 * DAY)
    issues = tmp_path / "issues.csv"
    issues.write_text("issue_id,opened_at\n42,2020-09-18T00:00:00Z\n")  # between the two changes
    labels, _ = _label(tiny_repo, tmp_path)
    assert labels.loc[newer, "bug_inducing"] and not labels.loc[old_culprit, "bug_inducing"]  # R-SZZ
    labels, _ = _label(tiny_repo, tmp_path, issues=issues)
    assert labels.loc[old_culprit, "bug_inducing"] and not labels.loc[newer, "bug_inducing"]


def test_young_commits_without_a_positive_label_are_unknown():
    commits = pd.DataFrame(
        {
            "sha": ["a", "b", "c", "d"],
            "seq": [0, 1, 2, 3],
            "committed_at": pd.to_datetime(
                [T0, T0 + 100 * DAY, T0 + 300 * DAY, T0 + 400 * DAY], unit="s", utc=True
            ),
        }
    )
    verdicts = select_inducing(
        [Candidate("d", "c", "x.py", 1), Candidate("d", "a", "x.py", 2)],
        dict(zip(commits["sha"], commits["seq"], strict=True)),
        dict(zip(commits["sha"], commits["committed_at"], strict=True)),
    )
    labels = label_commits(commits, verdicts, maturity_days=180).set_index("sha")["bug_inducing"]
    assert labels["c"] == True  # noqa: E712 - positive even though young
    assert labels["a"] == False and labels["b"] == False  # noqa: E712 - mature, not blamed (R-SZZ drops a)
    assert pd.isna(labels["d"])  # young and not blamed: unknown


def _labels_with_an_unread_fix(candidates: list[Candidate]) -> pd.Series:
    """Labels of mature commits a..e (in that order) when fix `d` could not be read in full."""
    commits = pd.DataFrame(
        {
            "sha": ["a", "b", "c", "d", "e"],
            "seq": [0, 1, 2, 3, 4],
            "committed_at": pd.to_datetime([T0 + i * DAY for i in range(5)], unit="s", utc=True),
        }
    )
    verdicts = select_inducing(
        candidates,
        dict(zip(commits["sha"], commits["seq"], strict=True)),
        dict(zip(commits["sha"], commits["committed_at"], strict=True)),
        failures=[FixFailure("d", "y.py", "blame failed", "fatal: bad object", 3)],
    )
    return label_commits(commits, verdicts, maturity_days=0).set_index("sha")["bug_inducing"]


def test_the_newest_candidate_of_a_fix_read_in_part_is_unknown_not_clean():
    labels = _labels_with_an_unread_fix([Candidate("d", "a", "x.py", 1), Candidate("d", "b", "x.py", 2)])
    assert pd.isna(labels["b"])  # the unread lines may or may not name a newer commit
    assert labels["a"] == False  # noqa: E712 - older than b: R-SZZ drops it whatever the unread lines hold
    assert labels["c"] == False  # noqa: E712 - mature, blamed by no fix


def test_a_commit_blamed_by_a_fix_read_in_part_and_kept_by_another_fix_is_positive():
    labels = _labels_with_an_unread_fix([Candidate("d", "b", "x.py", 1), Candidate("e", "b", "x.py", 1)])
    assert labels["b"] == True  # noqa: E712


def test_label_quality_on_the_demo_world(small_world, tmp_path):
    # Measured on this world (seed 11, 600 commits): precision 0.93, recall of fixed defects 0.62
    # (2,000-commit demo world: 0.89 and 0.64). R-SZZ keeps one candidate per fix, so a fix that repairs
    # several defects finds one: recall is bounded well below 1 by design.
    # Floors: precision 0.75, recall 0.5 — below what R-SZZ reaches here, above B-SZZ-level noise.
    settings = load_settings(data_dir=tmp_path)
    mine_repository(small_world.repo, settings, tmp_path / "t")
    label_repository(small_world.repo, settings, tmp_path / "t")
    quality = label_quality(
        pd.read_parquet(tmp_path / "t" / "commits.parquet"), pd.read_parquet(small_world.truth_path)
    )
    assert quality["precision"] >= 0.75, quality
    assert quality["recall_fixed"] >= 0.5, quality


def test_label_before_mine_says_what_to_run(tiny_repo, tmp_path):
    from features.errors import AwoError

    tiny_repo.lines("a.py", 3)
    tiny_repo.commit("Add a")
    with pytest.raises(AwoError, match="run `awo mine"):
        label_repository(tiny_repo.path, load_settings(data_dir=tmp_path), tmp_path / "none")
