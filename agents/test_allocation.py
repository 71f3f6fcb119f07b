"""Which tests a change runs, and in which order: each test's chance to fail, learned from its verdict
history (recency-weighted, as in the "recent failures first" heuristics of RETECS, Spieker et al. ISSTA
2017), from the files the change touches and from the change's risk; tests are ranked by that chance per
tempered unit of run time and cut to a time budget by the RETECS rule (take in order, skip what no
longer fits). Pure: frames and mappings in, records out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from agents.test_replay import CycleView

# Parameters, chosen on the first half of Paint Control's cycles only (the second half is reported apart).
HALF_LIFE_RUNS = 1.0  # a verdict weighs half as much as the next more recent one
PRIOR_WEIGHT = 0.1  # runs' worth of the overall failure rate mixed into every test's own rate
DURATION_EXPONENT = 0.25  # rank by p_fail / duration**0.25: p/duration (failures per second) was worse
HISTORY_DEPTH = 64  # older verdicts weigh under 0.5**64: ignored
LINK_PRIOR_WEIGHT = 2.0  # runs' worth of the test's own rate mixed into a file → test failure rate
REASON_THRESHOLD = 0.05
# Measured on the same half and not kept, as they did not beat this score there: per-test transition
# probabilities P(fail | last 2-6 verdicts) smoothed toward the pooled pattern rates, co-failure (lagged and
# same-cycle) with the tests that failed last, a long-run failure rate as tie-break, time since the last
# run, and logistic regression or LightGBM refit every 10 cycles on those features.


@dataclass(frozen=True)
class RankedTest:
    test_id: str
    suite: str
    p_fail: float
    duration_s: float
    flake_rate: float
    reasons: tuple[str, ...]


def recency_failure_rate(verdicts: Sequence[int] | np.ndarray, prior_rate: float) -> float:
    """Exponentially decayed failure rate of a verdict history (most recent first, 1 = failed), smoothed
    toward `prior_rate` with PRIOR_WEIGHT runs' worth of evidence (a Beta prior): an unknown test gets the
    prior."""
    history = np.asarray(verdicts[:HISTORY_DEPTH], dtype=float)
    weights = _DECAY[: len(history)]
    return float((weights @ history + PRIOR_WEIGHT * prior_rate) / (weights.sum() + PRIOR_WEIGHT))


_DECAY = 0.5 ** (np.arange(HISTORY_DEPTH) / HALF_LIFE_RUNS)


def priority(p_fail: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Ranking score: chance to fail per tempered unit of time. Scale-free in the duration's unit."""
    floor = max(float(np.min(durations[durations > 0], initial=1.0)), 1e-6)
    return np.asarray(p_fail, dtype=float) / np.maximum(durations, floor) ** DURATION_EXPONENT


@dataclass
class _TestRecord:
    suite: str
    test_id: str
    verdicts: list[int] = field(default_factory=list)  # most recent first, real failures only
    flakes: int = 0
    runs: int = 0
    durations: list[float] = field(default_factory=list)


class TestHistory:
    """Per test (suite, test_id): its verdicts per run in time order, flakes and durations; per changed file,
    how often each test failed in runs of commits that touched it. Built once, read by `rank_tests`."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        records: dict[tuple[str, str], _TestRecord],
        file_links: dict[str, dict[tuple[str, str], tuple[int, int]]],
        failing_runs: int,
        catches: dict[tuple[str, str], int],
    ) -> None:
        self._records = records
        self._file_links = file_links  # path -> test -> (runs after a change to it, failures among them)
        self._failing_runs = failing_runs
        self._catches = catches  # test -> runs with a real failure in which this test failed
        verdicts = [v for r in records.values() for v in r.verdicts]
        self.failure_rate = (sum(verdicts) + 1) / (len(verdicts) + 2)
        # What does not depend on the change is computed once: rank_tests runs on every decision.
        self._p_history = {k: recency_failure_rate(r.verdicts, self.failure_rate) for k, r in records.items()}
        self._duration = {k: float(np.median(r.durations or [0.0])) for k, r in records.items()}
        self._base = {
            k: (sum(r.verdicts) + self.failure_rate) / (len(r.verdicts) + 1) for k, r in records.items()
        }

    @classmethod
    def from_runs(
        cls,
        runs: pd.DataFrame,
        files_by_sha: Mapping[str, Sequence[str]] | None = None,
        as_of: datetime | None = None,
    ) -> TestHistory:
        """From the ingested test runs (columns run_id, sha, suite, test_id, duration_s, outcome, attempt and,
        optionally, started_at). Runs are put in time order by started_at where given, else by their first
        row in the frame (the stored table is sorted by run_id, so ids must sort in time order). With
        `as_of`, runs started later are left out. A run of a test fails when its last attempt failed; it is
        a flake when an attempt failed and a later one passed, or its outcome is 'flaky'; skipped runs are
        left out."""
        missing = {"run_id", "suite", "test_id", "duration_s", "outcome"} - set(runs.columns)
        if missing:
            raise ValueError(f"test runs lack column(s) {', '.join(sorted(missing))}")
        frame = runs.copy()
        if "attempt" not in frame.columns:
            frame["attempt"] = 1
        if "sha" not in frame.columns:
            frame["sha"] = None
        frame["_first_row"] = frame.groupby("run_id", sort=False).ngroup()
        if "started_at" in frame.columns and frame["started_at"].notna().any():
            started = pd.to_datetime(frame["started_at"], utc=True)
            if as_of is not None:
                cutoff = pd.Timestamp(as_of)
                cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff
                frame = frame[started.isna() | (started < cutoff)]
                started = started[frame.index]
            frame["_start"] = started.groupby(frame["run_id"]).transform("min")
        else:
            frame["_start"] = pd.NaT
        outcome = frame["outcome"].astype(str).str.lower()
        frame = frame.assign(_failed=outcome == "failed", _flaky=outcome == "flaky")[outcome != "skipped"]
        keys = ["_start", "_first_row", "run_id", "suite", "test_id"]
        per_run = (
            frame.sort_values([*keys, "attempt"], kind="stable")
            .groupby(keys, sort=True, dropna=False)
            .agg(
                sha=("sha", "first"),
                final_failed=("_failed", "last"),
                any_failed=("_failed", "any"),
                any_flaky=("_flaky", "any"),
                duration_s=("duration_s", "first"),
            )
            .reset_index()
        )
        records: dict[tuple[str, str], _TestRecord] = {}
        links: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}
        catches: dict[tuple[str, str], int] = {}
        failing_runs = 0
        run_failed, current = False, None
        for row in per_run.itertuples(index=False):
            if row.run_id != current:
                failing_runs += int(run_failed)
                run_failed, current = False, row.run_id
                sha = row.sha
                touched = (
                    sorted(set(files_by_sha.get(sha, ()))) if files_by_sha and isinstance(sha, str) else []
                )
            key = (str(row.suite), str(row.test_id))
            record = records.setdefault(key, _TestRecord(*key))
            failed = bool(row.final_failed)
            record.runs += 1
            record.flakes += int(bool(row.any_flaky) or (bool(row.any_failed) and not failed))
            record.verdicts.append(int(failed))
            record.durations.append(float(row.duration_s))
            if failed:
                run_failed = True
                catches[key] = catches.get(key, 0) + 1
            for path in touched:
                runs_failed = links.setdefault(path, {}).get(key, (0, 0))
                links[path][key] = (runs_failed[0] + 1, runs_failed[1] + int(failed))
        failing_runs += int(run_failed)
        for record in records.values():
            record.verdicts.reverse()  # most recent first
        return cls(records, links, failing_runs, catches)

    @property
    def known_tests(self) -> list[tuple[str, str]]:
        """(suite, test_id) of every test in the history, sorted."""
        return sorted(self._records)

    def duration_s(self, test_id: str, suite: str | None = None) -> float:
        """Median run time of the test."""
        record = self._record(test_id, suite)
        return self._duration[(record.suite, record.test_id)]

    def flake_rate(self, test_id: str, suite: str | None = None) -> float:
        """Share of the test's runs that were flakes (failed, then passed on retry, or reported 'flaky')."""
        record = self._record(test_id, suite)
        return record.flakes / record.runs if record.runs else 0.0

    def _record(self, test_id: str, suite: str | None) -> _TestRecord:
        if suite is not None and (suite, test_id) in self._records:
            return self._records[(suite, test_id)]
        matches = [r for (s, t), r in sorted(self._records.items()) if t == test_id and suite in (None, s)]
        if not matches:
            raise KeyError(f"unknown test {test_id!r}" + (f" in suite {suite!r}" if suite else ""))
        return matches[0]

    def history_p_fail(self, key: tuple[str, str]) -> float:
        return self._p_history[key]

    def link_p_fail(self, key: tuple[str, str], changed_files: Sequence[str]) -> tuple[float, str | None]:
        """How often the test failed in runs of commits that touched one of the files (the most telling
        file), smoothed toward the test's overall rate, minus that rate: what the files add."""
        base = self._base[key]
        best, best_path = 0.0, None
        for path in sorted(set(changed_files)):
            runs, failed = self._file_links.get(path, {}).get(key, (0, 0))
            if runs == 0:
                continue
            rate = (failed + LINK_PRIOR_WEIGHT * base) / (runs + LINK_PRIOR_WEIGHT)
            excess = (rate - base) / (1 - base) if base < 1 else 0.0
            if excess > best:
                best, best_path = excess, path
        return best, best_path

    def catch_rate(self, key: tuple[str, str]) -> float:
        """P(the test fails | a run has a real failure), smoothed: who catches a broken change."""
        return (self._catches.get(key, 0) + self.failure_rate) / (self._failing_runs + 1)


def rank_tests(
    history: TestHistory,
    changed_files: Sequence[str] = (),
    change_risk: float | None = None,
    candidates: Sequence[str] | None = None,
) -> list[RankedTest]:
    """Known tests (or those of `candidates`, by test_id) ranked to run: most likely to fail per tempered
    second first; ties broken by (suite, test_id). p_fail = 1 - (1-history)(1-files)(1-risk): the test's
    recency-weighted failure rate, what failures after changes to the same files add, and the change's
    risk times the test's share of failing runs it caught."""
    keys = history.known_tests
    if candidates is not None:
        wanted = set(candidates)
        keys = [k for k in keys if k[1] in wanted or f"{k[0]}::{k[1]}" in wanted]
    if not keys:
        return []
    p_fail = np.empty(len(keys))
    durations = np.empty(len(keys))
    why: list[tuple[str, ...]] = []
    for i, key in enumerate(keys):
        p_history = history.history_p_fail(key)
        p_files, path = history.link_p_fail(key, changed_files) if changed_files else (0.0, None)
        p_risk = 0.0 if change_risk is None else min(max(change_risk, 0.0), 1.0) * history.catch_rate(key)
        p_fail[i] = 1 - (1 - p_history) * (1 - p_files) * (1 - p_risk)
        durations[i] = history.duration_s(key[1], key[0])  # median of its runs
        reasons = []
        if p_history >= REASON_THRESHOLD:
            reasons.append(f"failed recently (recency-weighted failure rate {p_history:.2f})")
        if path is not None and p_files >= REASON_THRESHOLD:
            reasons.append(f"fails after changes to {path} (+{p_files:.2f})")
        if p_risk >= REASON_THRESHOLD:
            caught = history.catch_rate(key)
            reasons.append(f"change risk {change_risk:.2f} x catches {caught:.0%} of failing runs")
        why.append(tuple(reasons))
    score = priority(p_fail, durations)
    order = sorted(range(len(keys)), key=lambda i: (-score[i], keys[i]))
    return [
        RankedTest(
            test_id=keys[i][1],
            suite=keys[i][0],
            p_fail=round(float(p_fail[i]), 6),
            duration_s=float(durations[i]),
            flake_rate=history.flake_rate(keys[i][1], keys[i][0]),
            reasons=why[i],
        )
        for i in order
    ]


def select_within_budget(ranked: Sequence[RankedTest], budget_s: float) -> list[RankedTest]:
    """Tests taken in rank order while they fit; one that no longer fits is skipped and later, shorter ones
    may still be taken (the RETECS scheduling rule)."""
    chosen: list[RankedTest] = []
    used = 0.0
    for test in ranked:
        if used + test.duration_s <= budget_s + 1e-9:
            chosen.append(test)
            used += test.duration_s
    return chosen


class CycleLearner:
    """awo's prioritiser in the online replay of a RETECS-format history (agents.test_replay): the same
    score as `rank_tests` without file links (the format has none), from the cycle-start histories; the
    overall failure rate it smooths toward is learned from the cycles already revealed."""

    def __init__(self) -> None:
        self._failed = 1.0
        self._runs = 2.0

    def scores(self, view: CycleView) -> np.ndarray:
        prior = self._failed / self._runs
        p_fail = np.array([recency_failure_rate(h, prior) for h in view.histories])
        return priority(p_fail, view.durations)

    def learn(self, view: CycleView, verdicts: np.ndarray) -> None:
        self._failed += float(np.sum(verdicts))
        self._runs += len(verdicts)

    def __repr__(self) -> str:
        return f"CycleLearner(rate={self._failed / self._runs:.3f})"
