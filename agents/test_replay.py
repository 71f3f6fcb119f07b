"""Replay of public CI test histories (RETECS format) cycle by cycle, strictly online, to measure a test
prioritiser: the loader, the NAPFD/APFD metrics of Spieker et al. (ISSTA 2017), the baselines (random,
recent failures first, oracle) and the benchmark that compares them with awo's prioritiser."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from agents.test_allocation import CycleLearner

COLUMNS = ("Id", "Name", "Duration", "LastRun", "LastResults", "Verdict", "Cycle")  # CalcPrio is ignored
BUDGET_RATIO = 0.5  # RETECS' sched_time_ratio
MIN_TESTS_APFD = 6  # Bagherzadeh et al. leave APFD undefined for cycles with fewer tests
FIRST_FAILURE_SHARES = (0.10, 0.20, 0.35, 0.50)
PUBLISHED = {
    # Means over the 253 Paint Control cycles with a failure and >= 6 tests, computed from the per-cycle
    # results file of Bagherzadeh, Kahani, Briand (TSE 2021), moji1/tp_rl (see the data README).
    "retecs_network": {"mean_apfd_failing_cycles": 0.7415, "source": "RETECS network agent (tp_rl file)"},
    "heuristic_sort": {"mean_apfd_failing_cycles": 0.7582, "source": "RETECS 'sort' heuristic (tp_rl file)"},
}
_LAST_RESULTS = re.compile(r"^\[\s*(?:[01](?:\s*,\s*[01])*)?\s*\]$")


class CIHistoryError(ValueError):
    """A CI history file that cannot be read; the message names the file, the column and the row."""


# --- loading -----------------------------------------------------------------------------------------


def load_ci_history(path: Path | str) -> pd.DataFrame:
    """A RETECS-format CI history (`;`-separated, gzip or not) as a frame sorted by (Cycle, Id):
    Id int64, Name str, Duration float64, LastRun datetime64, LastResults object (tuple of 0/1, most
    recent first), Verdict int8, Cycle int64. Rows are numbered as file lines (the header is line 1)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False, compression="infer")
    except FileNotFoundError:
        raise CIHistoryError(f"{path}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise CIHistoryError(f"{path}: not a ';'-separated CSV: {exc}") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise CIHistoryError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {';'.join(COLUMNS)} "
            f"(found {';'.join(map(str, raw.columns))})"
        )
    if raw.empty:
        raise CIHistoryError(f"{path}: no rows")

    def bad(column: str, mask: pd.Series, why: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask.to_numpy())[0])
            raise CIHistoryError(
                f"{path}: line {i + 2} (Id {raw['Id'].iat[i]!r}), column {column}: {why}: "
                f"{raw[column].iat[i]!r}" + (f" ({int(mask.sum())} rows in all)" if mask.sum() > 1 else "")
            )

    out = pd.DataFrame(index=raw.index)
    for column in ("Id", "Cycle"):
        values = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        bad(column, values.isna() | (values != values.round()), "not an integer")
        out[column] = values.astype("int64")
    bad("Id", out["Id"].duplicated(), "duplicate Id")
    name = raw["Name"].str.strip()
    bad("Name", name == "", "empty test name")
    out["Name"] = name
    duration = pd.to_numeric(raw["Duration"].str.strip(), errors="coerce")
    bad("Duration", duration.isna() | (duration < 0), "not a non-negative number")
    out["Duration"] = duration.astype("float64")
    last_run = pd.to_datetime(raw["LastRun"].str.strip(), errors="coerce", format="mixed")
    bad("LastRun", last_run.isna(), "not a date and time")
    out["LastRun"] = last_run
    results = raw["LastResults"].str.strip()
    bad("LastResults", ~results.str.match(_LAST_RESULTS), "not a list of 0/1 such as [0, 1]")
    out["LastResults"] = [tuple(int(c) for c in s if c in "01") for s in results]
    verdict = raw["Verdict"].str.strip()
    bad("Verdict", ~verdict.isin(["0", "1"]), "not 0 or 1")
    out["Verdict"] = verdict.astype("int8")
    return out.sort_values(["Cycle", "Id"], kind="stable").reset_index(drop=True)


def load_commons_history(path: Path | str) -> pd.DataFrame:
    """An Apache Commons test-class history (tp_rl's enriched format, comma-separated, one row per cycle and
    test class) in the frame `load_ci_history` returns: a cycle per `cycle_id` in file order, Verdict 1
    when the class had failing methods, Duration its time in the cycle, LastResults rebuilt from the
    earlier cycles' verdicts (the file's own history columns are not used)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, usecols=["test_class_name", "cycle_id", "current_failures", "time"])
    except ValueError as exc:
        raise CIHistoryError(f"{path}: not a Commons test-class history: {exc}") from None
    cycle = pd.Series(pd.factorize(raw["cycle_id"])[0] + 1, index=raw.index)
    history: dict[str, list[int]] = {}
    last_results: list[tuple[int, ...]] = []
    verdicts = (pd.to_numeric(raw["current_failures"], errors="coerce").fillna(0) > 0).astype("int8")
    for name, verdict in zip(raw["test_class_name"], verdicts, strict=True):
        last_results.append(tuple(history.get(name, ())))
        history.setdefault(name, []).insert(0, int(verdict))
    return pd.DataFrame(
        {
            "Id": np.arange(1, len(raw) + 1, dtype="int64"),
            "Name": raw["test_class_name"].astype(str),
            "Duration": pd.to_numeric(raw["time"], errors="coerce").fillna(0.0).clip(lower=0.0),
            "LastRun": pd.Timestamp("2020-01-01") + pd.to_timedelta(cycle, unit="D"),
            "LastResults": last_results,
            "Verdict": verdicts,
            "Cycle": cycle.astype("int64"),
        }
    )


def load_history(path: Path | str) -> pd.DataFrame:
    """A RETECS-format history, or a Commons test-class history recognised by its header."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise CIHistoryError(f"{path}: cannot be read: {exc}") from None
    return load_commons_history(path) if header.startswith("test_class_name,") else load_ci_history(path)


# --- metrics -----------------------------------------------------------------------------------------


def scheduled_mask(durations: np.ndarray, budget: float | None) -> np.ndarray:
    """Which tests, in the given order, run within `budget` (RETECS: take in order, skip a test that no
    longer fits, keep going with later, shorter ones). None: all of them."""
    if budget is None:
        return np.ones(len(durations), dtype=bool)
    cumulative = np.cumsum(durations)
    mask = cumulative <= budget + 1e-9
    if mask.all():
        return mask
    first_skip = int(np.argmin(mask))
    used = float(cumulative[first_skip - 1]) if first_skip else 0.0
    for i in range(first_skip, len(durations)):
        d = float(durations[i])
        if used + d <= budget + 1e-9:
            mask[i] = True
            used += d
        else:
            mask[i] = False
    return mask


def napfd(verdicts: np.ndarray, durations: np.ndarray, budget: float | None = None) -> float:
    """NAPFD of one cycle's tests in priority order, exactly as RETECS codes it: n rows, m failures,
    rank_i the position among the scheduled rows of the i-th detected failure, p the share detected;
    NAPFD = p - sum(rank_i)/(m n) + p/(2n); 1 for a cycle without failures. No budget: APFD."""
    verdicts = np.asarray(verdicts, dtype=bool)
    n, m = len(verdicts), int(verdicts.sum())
    if m == 0:
        return 1.0
    mask = scheduled_mask(np.asarray(durations, dtype=float), budget)
    scheduled = verdicts[mask]
    ranks = np.flatnonzero(scheduled) + 1
    p = len(ranks) / m
    return float(p - ranks.sum() / (m * n) + p / (2 * n))


def time_to_first_failure(verdicts: np.ndarray, durations: np.ndarray) -> float:
    """Share of the cycle's test time spent until the first failing test has finished (no budget)."""
    verdicts = np.asarray(verdicts, dtype=bool)
    durations = np.asarray(durations, dtype=float)
    total = durations.sum()
    first = int(np.argmax(verdicts))
    if not verdicts.any():
        return float("nan")
    return float(durations[: first + 1].sum() / total) if total > 0 else (first + 1) / len(verdicts)


# --- the online replay ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CycleView:
    """What a prioritiser may see of a cycle before ranking it: no verdicts, and every row's history as of
    the cycle's start (for a test run twice in the cycle, the second row gets the first row's history,
    not the file's, which already holds the first run's verdict)."""

    cycle: int
    names: np.ndarray  # str, one per row
    durations: np.ndarray  # float
    histories: tuple[tuple[int, ...], ...]  # most recent first, 1 = failed
    started_at: pd.Timestamp  # the first execution of the cycle


class Prioritiser(Protocol):
    def scores(self, view: CycleView) -> np.ndarray:
        """One score per row, higher runs earlier; ties are broken at random by the replay."""
        ...

    def learn(self, view: CycleView, verdicts: np.ndarray) -> None:
        """The cycle's verdicts, revealed after it was ranked."""
        ...


@dataclass(frozen=True)
class ReplayCycle:
    view: CycleView
    verdicts: np.ndarray


def cycles_of(history: pd.DataFrame) -> list[ReplayCycle]:
    """The history cut into cycles, each with the view a prioritiser gets and the verdicts it must not."""
    out: list[ReplayCycle] = []
    for cycle, rows in history.groupby("Cycle", sort=True):
        names = rows["Name"].to_numpy(dtype=object)
        first: dict[str, tuple[int, ...]] = {}
        for name, results in zip(names, rows["LastResults"], strict=True):
            first.setdefault(name, results)
        view = CycleView(
            cycle=int(cycle),
            names=names,
            durations=rows["Duration"].to_numpy(dtype=float),
            histories=tuple(first[n] for n in names),
            started_at=rows["LastRun"].min(),
        )
        out.append(ReplayCycle(view, rows["Verdict"].to_numpy(dtype=np.int8)))
    return out


@dataclass(frozen=True)
class CycleResult:
    cycle: int
    tests: int
    failures: int
    apfd: float  # no budget
    napfd_50: float  # 50 % time budget
    time_to_first_failure: float  # share of cycle time; NaN without failures


def replay(
    cycles: Sequence[ReplayCycle], method: Prioritiser, seeds: Iterable[int] = (0,)
) -> list[list[CycleResult]]:
    """Rank each cycle with `method` before it sees the cycle's verdicts, score the order, then let it learn
    them. Scores are computed once per cycle; each seed breaks ties in its own random way. Returns the
    per-cycle results, one list per seed."""
    rngs = [np.random.default_rng(seed) for seed in seeds]
    per_seed: list[list[CycleResult]] = [[] for _ in rngs]
    for item in cycles:
        view, verdicts = item.view, item.verdicts
        scores = np.asarray(method.scores(view), dtype=float)
        if scores.shape != (len(verdicts),) or not np.isfinite(scores).all():
            raise ValueError(f"cycle {view.cycle}: want {len(verdicts)} finite scores, got {scores.shape}")
        budget = BUDGET_RATIO * float(view.durations.sum())
        for rng, results in zip(rngs, per_seed, strict=True):
            order = np.lexsort((rng.random(len(scores)), -scores))
            v, d = verdicts[order], view.durations[order]
            results.append(
                CycleResult(
                    cycle=view.cycle,
                    tests=len(v),
                    failures=int(v.sum()),
                    apfd=napfd(v, d),
                    napfd_50=napfd(v, d, budget),
                    time_to_first_failure=time_to_first_failure(v, d),
                )
            )
        method.learn(view, verdicts.copy())
    return per_seed


# --- baselines ---------------------------------------------------------------------------------------


class RandomOrder:
    """Every row tied: the replay's random tie-break is the order."""

    def scores(self, view: CycleView) -> np.ndarray:
        return np.zeros(len(view.names))

    def learn(self, view: CycleView, verdicts: np.ndarray) -> None:
        pass


class RecentFailuresFirst:
    """RETECS' reference heuristic as the data README defines it: the first four entries of the cycle-start
    history compared lexicographically (failed most recently first), ties at random."""

    def scores(self, view: CycleView) -> np.ndarray:
        return np.array([sum(b << (3 - k) for k, b in enumerate(h[:4])) for h in view.histories], dtype=float)

    def learn(self, view: CycleView, verdicts: np.ndarray) -> None:
        pass


class Oracle:
    """Knows the verdicts (from the benchmark, not the view): failing rows first, shortest first."""

    def __init__(self, cycles: Sequence[ReplayCycle]) -> None:
        self._verdicts = {c.view.cycle: c.verdicts for c in cycles}

    def scores(self, view: CycleView) -> np.ndarray:
        return self._verdicts[view.cycle] * 1e12 - view.durations

    def learn(self, view: CycleView, verdicts: np.ndarray) -> None:
        pass


# --- summary and benchmark ---------------------------------------------------------------------------


def summarise(per_seed: list[list[CycleResult]], first: int = 0, last: int | None = None) -> dict[str, Any]:
    """Means over seeds of the per-cycle means, over cycles numbered `first`..`last` (inclusive)."""

    def keep(r: CycleResult) -> bool:
        return r.cycle >= first and (last is None or r.cycle <= last)

    apfd: list[float] = []
    napfd_fail: list[float] = []
    napfd_all: list[float] = []
    ttff: list[float] = []
    within: dict[str, list[float]] = {f"{int(s * 100)}%": [] for s in FIRST_FAILURE_SHARES}
    for results in per_seed:
        rows = [r for r in results if keep(r)]
        failing = [r for r in rows if r.failures > 0]
        apfd.append(float(np.mean([r.apfd for r in failing if r.tests >= MIN_TESTS_APFD] or [np.nan])))
        napfd_fail.append(float(np.mean([r.napfd_50 for r in failing] or [np.nan])))
        napfd_all.append(float(np.mean([r.napfd_50 for r in rows] or [np.nan])))
        t = np.array([r.time_to_first_failure for r in failing])
        ttff.append(float(t.mean()) if len(t) else np.nan)
        for share in FIRST_FAILURE_SHARES:
            within[f"{int(share * 100)}%"].append(float((t <= share + 1e-12).mean()) if len(t) else np.nan)

    def mean(values: list[float]) -> float | None:
        finite = [v for v in values if v == v]
        return round(float(np.mean(finite)), 4) if finite else None

    results0 = [r for r in per_seed[0] if keep(r)]
    failing0 = [r for r in results0 if r.failures > 0]
    return {
        "mean_apfd_failing_cycles": mean(apfd),
        "mean_napfd_failing_cycles_50": mean(napfd_fail),
        "mean_napfd_all_cycles_50": mean(napfd_all),
        "first_failure_within": {k: mean(v) for k, v in within.items()},
        "mean_time_to_first_failure": mean(ttff),
        "cycles": {
            "all": len(results0),
            "failing": len(failing0),
            "apfd": sum(1 for r in failing0 if r.tests >= MIN_TESTS_APFD),
        },
        "seeds": len(per_seed),
    }


def default_methods(cycles: Sequence[ReplayCycle]) -> dict[str, Callable[[], Prioritiser]]:
    return {
        "awo": CycleLearner,
        "random": RandomOrder,
        "recent_failures_first": RecentFailuresFirst,
        "oracle": lambda: Oracle(cycles),
    }


def benchmark(
    path: Path | str,
    seeds: Sequence[int] = tuple(range(20)),
    methods: dict[str, Callable[[], Prioritiser]] | None = None,
) -> dict[str, Any]:
    """Every method replayed on the history at `path`; per method the whole replay and, separately, its
    first and second half of cycles (parameters were chosen on Paint Control's first half only)."""
    history = load_history(path)
    cycles = cycles_of(history)
    numbers = [c.view.cycle for c in cycles]
    middle = numbers[len(numbers) // 2 - 1]
    out: dict[str, Any] = {
        "dataset": Path(path).name,
        "rows": len(history),
        "tests": int(history["Name"].nunique()),
        "budget_ratio": BUDGET_RATIO,
        "halves": {"first": [numbers[0], middle], "second": [numbers[len(numbers) // 2], numbers[-1]]},
    }
    for name, make in (methods or default_methods(cycles)).items():
        per_seed = replay(cycles, make(), seeds)
        summary = summarise(per_seed)
        summary["first_half"] = summarise(per_seed, numbers[0], middle)
        summary["second_half"] = summarise(per_seed, numbers[len(numbers) // 2])
        out[name] = summary
    out["published"] = PUBLISHED
    return out


def print_benchmark(result: dict[str, Any]) -> None:
    """The benchmark as a rich table: one line per method, whole replay and both halves."""
    from rich.console import Console
    from rich.table import Table

    title = f"test prioritisation on {result['dataset']} (online replay, budget {BUDGET_RATIO:.0%})"
    table = Table(title=title)
    for column in ("method", "APFD", "APFD 1st half", "APFD 2nd half", "NAPFD@50%", "NAPFD 1st half",
                   "NAPFD 2nd half",
                   "1st fail ≤10%", "≤20%", "≤50%", "time to 1st fail"):  # fmt: skip
        table.add_column(column, justify="left" if column == "method" else "right")

    def cell(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for name, r in result.items():
        if not isinstance(r, dict) or "mean_napfd_failing_cycles_50" not in r:
            continue
        table.add_row(
            name,
            cell(r["mean_apfd_failing_cycles"]),
            cell(r["first_half"]["mean_apfd_failing_cycles"]),
            cell(r["second_half"]["mean_apfd_failing_cycles"]),
            cell(r["mean_napfd_failing_cycles_50"]),
            cell(r["first_half"]["mean_napfd_failing_cycles_50"]),
            cell(r["second_half"]["mean_napfd_failing_cycles_50"]),
            cell(r["first_failure_within"]["10%"], 2),
            cell(r["first_failure_within"]["20%"], 2),
            cell(r["first_failure_within"]["50%"], 2),
            cell(r["mean_time_to_first_failure"]),
        )
    for name, r in result.get("published", {}).items():
        table.add_row(f"{name} (published)", f"{r['mean_apfd_failing_cycles']:.3f}", *[""] * 9)
    Console().print(table)


def run_test_benchmark(dataset: Path, out: Path | None = None) -> dict[str, Any]:
    """`awo benchmark tests --dataset FILE [--out FILE.json]`: replay, print the table, write the JSON."""
    result = benchmark(dataset)
    print_benchmark(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
