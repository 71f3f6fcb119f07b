"""The 14 Kamei et al. metrics on a tiny repository built commit by commit, against values computed by
hand (renames, binary files, deletions, .mailmap, bots and the year-weighted experience included)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from features.change_metrics import KAMEI_METRICS, Change, FileChange, change_metrics
from pipelines.mine import mine_repository
from tests.conftest import DAY, T0

ALICE = ("Alice", "alice@example.org")
ALICE_OLD = ("Alice Old", "alice@old.example")
BOB = ("Bob", "bob@example.org")
BOT = ("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def _h(*counts: int) -> float:
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts)


@pytest.fixture
def mined(tiny_repo, settings):
    r = tiny_repo
    r.lines("app/a.py", 10, "a")
    r.lines("app/b.py", 4, "b")
    r.write("README.md", "# demo\nsecond line\n")
    r.write(".mailmap", "Alice <alice@example.org> Alice Old <alice@old.example>\n")
    c1 = r.commit("Initial import", ALICE, T0)
    r.write(
        "app/a.py", (r.path / "app/a.py").read_text().replace("a_3 =", "a_3_new =").replace("a_4 =", "a_4x =")
    )
    c2 = r.commit("Fix crash in a", BOB, T0 + 2 * DAY)
    r.mv("app/b.py", "lib/b.py")
    r.write("lib/logo.png", PNG)
    r.write("app/a.py", (r.path / "app/a.py").read_text() + "x = 1\ny = 2\nz = 3\n")
    c3 = r.commit("Move b to lib, add logo", ALICE, T0 + 4 * DAY)
    r.write("lib/b.py", (r.path / "lib/b.py").read_text().replace("b_1 =", "b_1_tuned ="))
    r.write("lib/logo.png", PNG + b"\x00more")
    r.rm("README.md")
    c4 = r.commit("Tune b", BOB, T0 + 400 * DAY)
    r.write("app/a.py", (r.path / "app/a.py").read_text() + "w = 4\n")
    c5 = r.commit("Add w", ALICE_OLD, T0 + 401 * DAY)
    r.write("app/a.py", (r.path / "app/a.py").read_text() + "v = 5\n")
    c6 = r.commit("Bump a", BOT, T0 + 402 * DAY)
    r.write("app/a.py", (r.path / "app/a.py").read_text() + "u = 6\n")
    c7 = r.commit("Add u", BOB, T0 + 403 * DAY)
    mine_repository(r.path, settings, settings.data_dir / "t")
    commits = pd.read_parquet(settings.data_dir / "t" / "commits.parquet").set_index("sha")
    files = pd.read_parquet(settings.data_dir / "t" / "files.parquet")
    return commits, files, (c1, c2, c3, c4, c5, c6, c7)


# Hand-computed: see the comments for how each value follows from the definitions.
EXPECTED = [
    # c1: 4 new files in {app, root}; churn 10, 4, 2, 1; no history, first commit of Alice.
    dict(ns=2, nd=2, nf=4, entropy=_h(10, 4, 2, 1), la=17, ld=0, lt=0, fix=False, ndev=0, age=0.0, nuc=0,
         exp=0, rexp=0.0, sexp=0),
    # c2: Bob changes 2 lines of a.py (10 lines, last changed by Alice 2 days before); a fix.
    dict(ns=1, nd=1, nf=1, entropy=0.0, la=2, ld=2, lt=10, fix=True, ndev=1, age=2.0, nuc=1,
         exp=0, rexp=0.0, sexp=0),
    # c3: a.py +3; b.py renamed app→lib (0/0, carries its 4 lines and history); logo.png added, binary.
    # lt = 10 + 4 + 0; ndev = {Alice, Bob}; age = mean(2 days for a.py, 4 days for b.py); nuc = {c1, c2};
    # Alice: 1 earlier change (c1, 4 days ago → weight 1), in subsystem app.
    dict(ns=2, nd=2, nf=3, entropy=0.0, la=3, ld=0, lt=14, fix=False, ndev=2, age=3.0, nuc=2,
         exp=1, rexp=1.0, sexp=1),
    # c4: b.py 1/1, logo.png binary 0/0, README.md deleted 0/2 → entropy of (2, 2) = 1;
    # lt = 4 + 0 + 2; only Alice touched those files; ages 396, 396, 400 days; nuc = {c1, c3};
    # Bob: c2, 398 days ago → 1 whole year → 1/2; c2 touched only app, not lib or root.
    dict(ns=2, nd=2, nf=3, entropy=1.0, la=1, ld=3, lt=6, fix=False, ndev=1, age=(396 + 396 + 400) / 3,
         nuc=2, exp=1, rexp=0.5, sexp=0),
    # c5: Alice under her old address, merged by .mailmap: c1 (401 days → 1/2) and c3 (397 days → 1/2).
    # a.py: 10 + 2 - 2 + 3 = 13 lines; devs {Alice, Bob}; last change c3 397 days ago; changes c1, c2, c3.
    dict(ns=1, nd=1, nf=1, entropy=0.0, la=1, ld=0, lt=13, fix=False, ndev=2, age=397.0, nuc=3,
         exp=2, rexp=1.0, sexp=2),
    # c6: the bot: no experience of its own; its change still counts as a change of a.py.
    dict(ns=1, nd=1, nf=1, entropy=0.0, la=1, ld=0, lt=14, fix=False, ndev=2, age=1.0, nuc=4,
         exp=0, rexp=0.0, sexp=0),
    # c7: Bob again: the bot is not a developer (ndev 2) but its change is one (nuc 5, age 1 day);
    # Bob's c2 (401 days → 1/2) and c4 (3 days → 1), only c2 in app.
    dict(ns=1, nd=1, nf=1, entropy=0.0, la=1, ld=0, lt=15, fix=False, ndev=2, age=1.0, nuc=5,
         exp=2, rexp=1.5, sexp=1),
]  # fmt: skip


@pytest.mark.parametrize("index", range(7), ids=[f"c{i + 1}" for i in range(7)])
def test_every_metric_matches_its_hand_computed_value(mined, index):
    commits, _, shas = mined
    row = commits.loc[shas[index]]
    for metric in KAMEI_METRICS:
        assert row[metric] == pytest.approx(EXPECTED[index][metric]), f"c{index + 1}.{metric}"


def test_mailmap_merges_two_identities_of_one_author(mined):
    commits, _, shas = mined
    assert commits.loc[shas[4], "author_name"] == "Alice"
    assert commits.loc[shas[4], "author_email"] == "alice@example.org"
    assert commits.loc[shas[4], "author_id"] == commits.loc[shas[0], "author_id"]


def test_bot_is_flagged_and_humans_are_not(mined):
    commits, _, shas = mined
    assert commits.loc[shas[5], "is_bot"]
    assert not commits.loc[list(shas[:5]), "is_bot"].any()


def test_rename_and_binary_rows_in_files_table(mined):
    _, files, shas = mined
    c3 = files[files["sha"] == shas[2]].set_index("path")
    assert c3.loc["lib/b.py", "change_type"] == "RENAME"
    assert c3.loc["lib/b.py", "old_path"] == "app/b.py"
    assert c3.loc["lib/logo.png", "is_binary"]
    assert (c3.loc["lib/logo.png", ["la", "ld"]] == 0).all()
    c4 = files[files["sha"] == shas[3]].set_index("path")
    assert c4.loc["README.md", "change_type"] == "DELETE"
    assert c4.loc["README.md", "is_docs"]


def test_unmined_change_is_scored_by_the_same_function():
    change = Change(
        files=(FileChange("svc/x.py", "MODIFY", 30, 10), FileChange("svc/y.py", "ADD", 10, 0)),
        author_id="someone",
        at=float(T0),
        is_fix=True,
    )
    values = change_metrics(change)
    assert values["la"] == 40 and values["ld"] == 10 and values["nf"] == 2 and values["ns"] == 1
    assert values["entropy"] == pytest.approx(_h(40, 10))
    assert values["fix"] is True and values["exp"] == 0
