"""Test allocation: the NAPFD/APFD metrics by hand, the online replay's leakage rules, the baselines and awo's
prioritiser on the real Paint Control history, loader errors, flakes and change-to-test links."""

from __future__ import annotations

import functools
import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.test_allocation import CycleLearner, RankedTest, TestHistory, rank_tests, select_within_budget
from agents.test_replay import (
    CIHistoryError,
    CycleView,
    RandomOrder,
    RecentFailuresFirst,
    cycles_of,
    load_ci_history,
    load_commons_history,
    napfd,
    replay,
    scheduled_mask,
    summarise,
    time_to_first_failure,
)
from features import delivery

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ci-tests"
PAINT_CONTROL = DATA / "retecs" / "paintcontrol.csv.gz"
needs_data = pytest.mark.skipif(not PAINT_CONTROL.exists(), reason="Paint Control data is not here")
HEADER = "Id;Name;Duration;CalcPrio;LastRun;LastResults;Verdict;Cycle\n"


@functools.lru_cache(maxsize=1)
def paint_control_cycles():
    return cycles_of(load_ci_history(PAINT_CONTROL))


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def runs_frame(rows: list[tuple]) -> pd.DataFrame:
    columns = ["run_id", "sha", "suite", "test_id", "duration_s", "outcome", "attempt", "started_at"]
    return pd.DataFrame([r if len(r) == 8 else (*r, None) for r in rows], columns=columns)


# --- metrics -----------------------------------------------------------------------------------------


def test_apfd_of_a_small_order_matches_the_formula_by_hand():
    # n = 4, m = 2, failures at ranks 2 and 4: 1 - 6/8 + 1/8
    assert napfd(np.array([0, 1, 0, 1]), np.ones(4)) == pytest.approx(0.375)
    assert napfd(np.array([1, 1, 0, 0]), np.ones(4)) == pytest.approx(1 - 3 / 8 + 1 / 8)


def test_napfd_under_a_budget_skips_what_no_longer_fits_and_scales_by_the_share_found():
    # budget 3: take 1 (1 s), skip the 3 s failure, take the next two 1 s tests; one failure of two found
    # at scheduled rank 3: p = 1/2, NAPFD = 0.5 - 3/(2*4) + 0.5/(2*4)
    verdicts, durations = np.array([0, 1, 0, 1]), np.array([1.0, 3.0, 1.0, 1.0])
    assert scheduled_mask(durations, 3.0).tolist() == [True, False, True, True]
    assert napfd(verdicts, durations, budget=3.0) == pytest.approx(0.1875)


def test_a_cycle_without_failures_scores_one_and_an_empty_schedule_zero():
    assert napfd(np.zeros(5), np.ones(5), budget=2.0) == 1.0
    assert napfd(np.array([1, 0]), np.array([5.0, 5.0]), budget=1.0) == pytest.approx(0.0)


def test_time_to_first_failure_is_the_share_of_cycle_time_until_the_first_failure_ends():
    assert time_to_first_failure(np.array([0, 1, 0]), np.array([1.0, 2.0, 7.0])) == pytest.approx(0.3)


# --- loader ------------------------------------------------------------------------------------------


def test_a_missing_column_is_named_with_the_file(tmp_path):
    path = write_csv(tmp_path / "h.csv", ["1;a;10;0;2016-01-01 10:00:00;[0];0"], HEADER.replace(";Cycle", ""))
    with pytest.raises(CIHistoryError, match=r"h\.csv: missing column\(s\) Cycle"):
        load_ci_history(path)


def test_a_bad_last_results_names_the_file_line_and_column(tmp_path):
    rows = ["1;a;10;0;2016-01-01 10:00:00;[0, 1];0;1", "2;b;10;0;2016-01-01 10:05:00;[0, 2];1;1"]
    path = write_csv(tmp_path / "h.csv", rows)
    with pytest.raises(CIHistoryError, match=r"h\.csv: line 3 \(Id '2'\), column LastResults") as err:
        load_ci_history(path)
    assert "[0, 2]" in str(err.value)


def test_a_bad_verdict_in_a_gzip_file_is_named(tmp_path):
    path = tmp_path / "h.csv.gz"
    path.write_bytes(gzip.compress((HEADER + "1;a;10;0;2016-01-01 10:00:00;[];yes;1\n").encode()))
    with pytest.raises(CIHistoryError, match=r"line 2 .*column Verdict: not 0 or 1"):
        load_ci_history(path)


@needs_data
def test_paint_control_loads_whole():
    history = load_ci_history(PAINT_CONTROL)
    assert len(history) == 25_594 and history["Cycle"].nunique() == 352 and history["Name"].nunique() == 89
    assert int(history["Verdict"].sum()) == 4_956


def test_a_commons_history_gets_histories_from_earlier_cycles_only():
    path = DATA / "commons" / "Commons_codec.csv.gz"
    if not path.exists():
        pytest.skip("Commons data is not here")
    history = load_commons_history(path)
    assert history["Cycle"].nunique() == 615 and int(history["Verdict"].sum()) == 3
    failed = history[history["Verdict"] == 1].iloc[0]
    later = history[(history["Name"] == failed["Name"]) & (history["Cycle"] > failed["Cycle"])].iloc[0]
    assert later["LastResults"] == (1, *failed["LastResults"])  # its own verdict only from the next cycle on


# --- the replay is online ------------------------------------------------------------------------------


def test_a_test_rerun_in_the_same_cycle_gets_the_cycle_start_history_not_the_files(tmp_path):
    rows = [
        "1;a;10;0;2016-01-01 10:00:00;[0, 0];1;1",
        "2;b;10;0;2016-01-01 10:01:00;[0, 0];0;1",
        "3;a;10;0;2016-01-01 10:02:00;[1, 0, 0];1;1",  # the file's history already holds row 1's verdict
        "4;a;10;0;2016-01-02 10:00:00;[1, 1, 0, 0];0;2",
    ]
    cycles = cycles_of(load_ci_history(write_csv(tmp_path / "h.csv", rows)))
    assert cycles[0].view.histories == ((0, 0), (0, 0), (0, 0))
    assert not hasattr(cycles[0].view, "verdicts") and "Verdict" not in CycleView.__dataclass_fields__
    # with the file's histories, recent failures first would put row 3 first: APFD 1 - 3/6 + 1/6 = 0.667;
    # with the cycle-start ones it cannot tell the rows apart and averages random order's 0.5
    seeds = range(300)
    first_cycle = [r[0].apfd for r in replay(cycles, RecentFailuresFirst(), seeds)]
    assert np.mean(first_cycle) == pytest.approx(0.5, abs=0.03)


@needs_data
def test_the_replay_ranks_every_cycle_before_revealing_its_verdicts_and_in_order():
    calls: list[tuple[str, int]] = []

    class Spy:
        def scores(self, view: CycleView) -> np.ndarray:
            calls.append(("scores", view.cycle))
            return np.zeros(len(view.names))

        def learn(self, view: CycleView, verdicts: np.ndarray) -> None:
            calls.append(("learn", view.cycle))

    cycles = paint_control_cycles()
    replay(cycles, Spy(), seeds=(0,))
    expected = [(kind, c.view.cycle) for c in cycles for kind in ("scores", "learn")]
    assert calls == expected


@needs_data
def test_cycle_start_histories_match_the_verdicts_of_earlier_cycles():
    rebuilt: dict[str, list[int]] = {}
    for item in paint_control_cycles():
        for name, history in zip(item.view.names, item.view.histories, strict=True):
            if name in rebuilt:
                assert list(history[: len(rebuilt[name])]) == rebuilt[name][: len(history)]
            else:
                rebuilt[name] = list(history)
        for name, verdict in zip(item.view.names, item.verdicts, strict=True):
            rebuilt[name].insert(0, int(verdict))


# --- baselines and awo on Paint Control -------------------------------------------------------------------


@needs_data
def test_recent_failures_first_reproduces_the_readme_reference():
    summary = summarise(replay(paint_control_cycles(), RecentFailuresFirst(), seeds=range(10)))
    assert summary["mean_napfd_failing_cycles_50"] == pytest.approx(0.691, abs=0.01)
    assert summary["mean_apfd_failing_cycles"] == pytest.approx(0.754, abs=0.01)
    assert summary["cycles"] == {"all": 352, "failing": 257, "apfd": 253}


@needs_data
def test_awo_beats_random_and_recent_failures_first_on_paint_control():
    cycles = paint_control_cycles()
    awo = summarise(replay(cycles, CycleLearner(), seeds=range(5)))
    rff = summarise(replay(cycles, RecentFailuresFirst(), seeds=range(5)))
    rand = summarise(replay(cycles, RandomOrder(), seeds=range(5)))
    assert awo["mean_apfd_failing_cycles"] > rand["mean_apfd_failing_cycles"] + 0.2
    assert awo["mean_apfd_failing_cycles"] > max(0.758, rff["mean_apfd_failing_cycles"])
    assert awo["mean_napfd_failing_cycles_50"] > rff["mean_napfd_failing_cycles_50"]


# --- TestHistory and rank_tests ----------------------------------------------------------------------


def test_a_failure_that_passes_on_retry_is_a_flake_and_not_a_failure():
    rows = []
    for i in range(10):
        rows.append((f"r{i}", f"{i:040x}", "unit", "t_clock", 1.0, "failed" if i % 2 else "passed", 1))
        if i % 2:
            rows.append((f"r{i}", f"{i:040x}", "unit", "t_clock", 1.0, "passed", 2))
        rows.append((f"r{i}", f"{i:040x}", "unit", "t_flag", 1.0, "flaky" if i == 9 else "passed", 1))
        rows.append((f"r{i}", f"{i:040x}", "unit", "t_cart", 1.0, "failed" if i == 9 else "passed", 1))
        if i == 9:
            rows.append((f"r{i}", f"{i:040x}", "unit", "t_cart", 1.0, "failed", 2))
    history = TestHistory.from_runs(runs_frame(rows))
    assert history.flake_rate("t_clock") == pytest.approx(0.5)
    assert history.flake_rate("t_flag") == pytest.approx(0.1)
    assert history.flake_rate("t_cart") == 0.0
    ranked = {t.test_id: t for t in rank_tests(history)}
    assert ranked["t_cart"].p_fail > 0.4 > 0.01 > ranked["t_clock"].p_fail
    assert ranked["t_clock"].p_fail == pytest.approx(ranked["t_flag"].p_fail)


def test_rank_tests_uses_the_files_a_change_touches():
    rows, files = [], {}
    for i in range(40):
        sha = f"{i:040x}"
        files[sha] = ["pay/charge.py"] if i % 2 else ["web/page.py"]
        pay_fails, web_fails = i % 8 == 1, i % 8 == 4
        rows.append((f"r{i}", sha, "unit", "test_charge", 2.0, "failed" if pay_fails else "passed", 1))
        rows.append((f"r{i}", sha, "unit", "test_page", 2.0, "failed" if web_fails else "passed", 1))
    for i in range(40, 44):  # a quiet spell: neither test failed lately
        rows.append((f"r{i}", f"{i:040x}", "unit", "test_charge", 2.0, "passed", 1))
        rows.append((f"r{i}", f"{i:040x}", "unit", "test_page", 2.0, "passed", 1))
    history = TestHistory.from_runs(runs_frame(rows), files_by_sha=files)
    for changed, first in ((["pay/charge.py"], "test_charge"), (["web/page.py"], "test_page")):
        ranked = rank_tests(history, changed_files=changed)
        assert ranked[0].test_id == first
        assert any(changed[0] in r for r in ranked[0].reasons)
        assert ranked[0].p_fail > ranked[1].p_fail


def test_change_risk_raises_the_tests_that_catch_failing_runs():
    rows = []
    for i in range(20):
        rows.append((f"r{i}", f"{i:040x}", "unit", "test_a", 1.0, "failed" if i % 5 == 0 else "passed", 1))
        rows.append((f"r{i}", f"{i:040x}", "unit", "test_b", 1.0, "passed", 1))
    history = TestHistory.from_runs(runs_frame(rows))
    calm = {t.test_id: t.p_fail for t in rank_tests(history)}
    risky = {t.test_id: t.p_fail for t in rank_tests(history, change_risk=0.9)}
    assert risky["test_a"] - calm["test_a"] > 0.3 > risky["test_b"] - calm["test_b"]


def test_ties_are_broken_by_suite_and_test_id_never_by_row_order():
    rows = [(f"r{i}", f"{i:040x}", s, t, 1.0, "passed", 1) for i in range(3) for s, t in
            (("web", "z"), ("api", "b"), ("api", "a"))]  # fmt: skip
    forward = [(t.suite, t.test_id) for t in rank_tests(TestHistory.from_runs(runs_frame(rows)))]
    backward = [(t.suite, t.test_id) for t in rank_tests(TestHistory.from_runs(runs_frame(rows[::-1])))]
    assert forward == backward == [("api", "a"), ("api", "b"), ("web", "z")]


def test_runs_are_ordered_by_started_at_and_as_of_leaves_later_runs_out():
    def at(day: int) -> str:
        return f"2026-01-{day:02d}T10:00:00Z"

    rows = [  # listed newest first: only started_at says that test_new failed most recently
        ("r3", "c" * 40, "unit", "test_new", 1.0, "failed", 1, at(3)),
        ("r3", "c" * 40, "unit", "test_old", 1.0, "passed", 1, at(3)),
        ("r1", "a" * 40, "unit", "test_new", 1.0, "passed", 1, at(1)),
        ("r1", "a" * 40, "unit", "test_old", 1.0, "failed", 1, at(1)),
    ]
    history = TestHistory.from_runs(runs_frame(rows))
    assert rank_tests(history)[0].test_id == "test_new"
    before = TestHistory.from_runs(runs_frame(rows), as_of=datetime(2026, 1, 2, tzinfo=UTC))
    assert rank_tests(before)[0].test_id == "test_old"
    assert rank_tests(history, candidates=["test_old"])[0].test_id == "test_old"


def test_the_budget_takes_tests_in_order_and_skips_what_no_longer_fits():
    ranked = [RankedTest(f"t{i}", "s", 0.5, d, 0.0, ()) for i, d in enumerate([4.0, 5.0, 1.0, 2.0])]
    assert [t.test_id for t in select_within_budget(ranked, 6.0)] == ["t0", "t2"]
    assert select_within_budget(ranked, 0.5) == []


def test_a_test_run_row_may_carry_started_at_or_not():
    base = {
        "run_id": "r1",
        "sha": "a" * 40,
        "suite": "unit",
        "test_id": "t",
        "duration_s": 1,
        "outcome": "passed",
    }
    assert delivery.TestRunRow(**base).started_at is None
    row = delivery.TestRunRow(**base, started_at="2026-01-01T10:00:00")
    assert row.started_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
