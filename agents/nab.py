"""The Numenta Anomaly Benchmark's scoring (Lavin & Ahmad 2015, arXiv:1510.03336; numenta/NAB v1.1): corpus
loading, anomaly windows, the scaled-sigmoid score per cost profile, one threshold per profile tuned over the
corpus, normalisation between the null and the perfect detector, and a leave-one-category-out variant."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import BadConfig, BadTable

PROBATIONARY_PERCENT = 0.15  # NAB: the first 15% of a file (at most 0.15 x 5000 rows) is not scored
WINDOWS_FILE = "labels/combined_windows.json"
NO_DETECTION = math.inf  # a threshold above every score: the detector never fires


@dataclass(frozen=True)
class Profile:
    """A NAB cost profile (config/profiles.json): weight of a true positive, a false positive, a miss."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES: tuple[Profile, ...] = (
    Profile("standard", 1.0, 0.11, 1.0),
    Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


@dataclass(frozen=True)
class NabFile:
    """One labelled stream. `windows` are inclusive (first, last) row indices, in time order."""

    name: str  # "<category>/<file>.csv", as in the labels file
    timestamps: np.ndarray  # datetime64[ns], file order (NAB does not sort)
    values: np.ndarray  # float64
    windows: tuple[tuple[int, int], ...]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def probationary_length(self) -> int:
        return probationary_length(len(self.values))


@dataclass(frozen=True)
class FileScore:
    """A file scored at one threshold; counts are NAB's (points after the probationary period)."""

    name: str
    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


@dataclass(frozen=True)
class PublishedRow:
    """One row of a published `<detector>_<profile>_scores.csv`."""

    name: str
    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


def probationary_length(rows: int) -> int:
    return int(min(math.floor(PROBATIONARY_PERCENT * rows), PROBATIONARY_PERCENT * 5000))


def scaled_sigmoid(y: np.ndarray) -> np.ndarray:
    """NAB's sigma(y) = 2 / (1 + e^(5y)) - 1, and -1 beyond y = 3 (long after a window)."""
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, value)


def load_corpus(dataset: Path, labels: Path | None = None) -> list[NabFile]:
    """The files named in the labels file (default `<dataset>/labels/combined_windows.json`), read from
    `<dataset>/data/` (or `<dataset>/` itself when it has no `data/` folder)."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise BadConfig(f"{dataset}: not a folder (expected a NAB corpus with data/ and labels/)")
    labels = Path(labels) if labels is not None else dataset / WINDOWS_FILE
    if not labels.is_file():
        raise BadConfig(f"{labels}: labels file not found (expected NAB's combined_windows.json)")
    try:
        windows_by_file = json.loads(labels.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadTable(f"{labels}: not JSON ({exc})") from None
    if not isinstance(windows_by_file, dict) or not windows_by_file:
        raise BadTable(f"{labels}: expected a non-empty object {{file: [[start, end], ...]}}")
    data_dir = dataset / "data" if (dataset / "data").is_dir() else dataset
    return [_load_file(data_dir, name, windows_by_file[name], labels) for name in sorted(windows_by_file)]


def _load_file(data_dir: Path, name: str, windows: object, labels: Path) -> NabFile:
    path = data_dir / name
    if ".." in Path(name).parts or not path.is_file():
        raise BadTable(f"{labels}: file {name!r} not found under {data_dir}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadTable(f"{path}: unreadable CSV ({exc})") from None
    for column in ("timestamp", "value"):
        if column not in frame.columns:
            raise BadTable(f"{path}: no '{column}' column (header: {','.join(map(str, frame.columns))})")
    try:
        stamps = pd.to_datetime(frame["timestamp"], format="mixed").to_numpy(dtype="datetime64[ns]")
    except (ValueError, TypeError) as exc:
        raise BadTable(f"{path}: field 'timestamp' is not a date ({exc})") from None
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise BadTable(f"{path}: field 'value' is not a number on row {bad[0] + 2}")
    if not isinstance(windows, list):
        raise BadTable(f"{labels}: windows of {name} are not a list")
    spans = []
    for window in windows:
        if not (isinstance(window, list) and len(window) == 2):
            raise BadTable(f"{labels}: window {window!r} of {name} is not [start, end]")
        first, last = (_first_index(stamps, edge, name, labels) for edge in window)
        if last < first:
            raise BadTable(f"{labels}: window {window!r} of {name} ends before it starts")
        spans.append((first, last))
    spans.sort()
    return NabFile(name, stamps, values, tuple(spans))


def _first_index(stamps: np.ndarray, edge: object, name: str, labels: Path) -> int:
    """NAB finds window edges with `timestamps.index(...)`: the first row with that time."""
    try:
        when = np.datetime64(pd.Timestamp(str(edge)).to_datetime64(), "ns")
    except ValueError:
        raise BadTable(f"{labels}: window edge {edge!r} of {name} is not a timestamp") from None
    hits = np.flatnonzero(stamps == when)
    if not hits.size:
        raise BadTable(f"{labels}: window edge {edge!r} is not a timestamp of {name}")
    return int(hits[0])


# ---------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _Layout:
    """Per point of a file: which window it is in (-1: outside, -2: probationary) and the weight a detection
    there would earn, before the profile's A_TP / A_FP factor (NAB's `calcSweepScore`)."""

    window: np.ndarray  # int64
    in_window_weight: np.ndarray  # sigma(y) / sigma(-1) inside windows, 0 elsewhere
    outside_weight: np.ndarray  # sigma(y) outside windows (<= 0), 0 inside


def _layout(nab_file: NabFile) -> _Layout:
    n = len(nab_file.values)
    index = np.arange(n)
    window = np.full(n, -1, dtype=np.int64)
    inside = np.zeros(n)
    outside = np.full(n, -1.0)  # before any window: -1
    max_tp = float(scaled_sigmoid(np.array(-1.0)))
    for k, (first, last) in enumerate(nab_file.windows):
        width = last - first + 1
        span = slice(first, last + 1)
        window[span] = k
        # relative position: -1 at the left edge, -1/width at the right edge
        inside[span] = scaled_sigmoid(-(last - index[span] + 1) / width) / max_tp
        after = index > last
        if width > 1:
            outside[after] = scaled_sigmoid((index[after] - last) / (width - 1))
    outside[window >= 0] = 0.0
    window[: nab_file.probationary_length] = -2
    return _Layout(window, inside, outside)


def score_file(nab_file: NabFile, scores: np.ndarray, threshold: float, profile: Profile) -> FileScore:
    """NAB's raw score of one file at one threshold: a point is a detection when its score >= threshold;
    the earliest detection in a window earns A_TP x sigma(y)/sigma(-1), a window with none costs A_FN,
    a detection outside windows costs A_FP x sigma(y); the probationary period is ignored."""
    layout = _layout(nab_file)
    scores = np.asarray(scores, dtype=float)
    if scores.shape != nab_file.values.shape:
        raise BadConfig(f"{nab_file.name}: {scores.size} scores for {nab_file.values.size} rows")
    detected = scores >= threshold
    scored = layout.window != -2
    in_window = layout.window >= 0
    total = 0.0
    for k in range(len(nab_file.windows)):
        hits = np.flatnonzero(detected & (layout.window == k))
        total += profile.tp * layout.in_window_weight[hits[0]] if hits.size else -profile.fn
    false_alarms = detected & (layout.window == -1)
    total += profile.fp * float(layout.outside_weight[false_alarms].sum())
    tp = int((detected & in_window).sum())
    fp = int(false_alarms.sum())
    fn = int((~detected & in_window).sum())
    tn = int((~detected & scored & ~in_window).sum())
    return FileScore(nab_file.name, threshold, total, tp, tn, fp, fn, len(scores))


@dataclass(frozen=True)
class Sweep:
    """The raw corpus score as a step function of the threshold: score(t) = base + sum of `delta` over
    events with `at >= t` (NAB's `calcScoreByThreshold`, summed over files)."""

    base: float
    at: np.ndarray
    delta: np.ndarray

    def best(self) -> tuple[float, float]:
        """(threshold, raw score) maximising the score; among ties the highest threshold (fewest alarms)."""
        if not self.at.size:
            return NO_DETECTION, self.base
        order = np.argsort(-self.at, kind="stable")
        at, cumulative = self.at[order], self.base + np.cumsum(self.delta[order])
        last_of_value = np.r_[at[1:] != at[:-1], True]  # the score once every point at that value fires
        candidates, totals = at[last_of_value], cumulative[last_of_value]
        k = int(np.argmax(totals))
        if totals[k] <= self.base:
            return NO_DETECTION, self.base
        return float(candidates[k]), float(totals[k])

    def __add__(self, other: Sweep) -> Sweep:
        return Sweep(self.base + other.base, np.r_[self.at, other.at], np.r_[self.delta, other.delta])


def sweep_file(nab_file: NabFile, scores: np.ndarray, profile: Profile) -> Sweep:
    """The events by which a file's score changes as the threshold falls: each window's best (earliest)
    detection so far improves in steps; each outside point adds its FP cost."""
    layout = _layout(nab_file)
    scores = np.asarray(scores, dtype=float)
    if scores.shape != nab_file.values.shape:
        raise BadConfig(f"{nab_file.name}: {scores.size} scores for {nab_file.values.size} rows")
    outside = layout.window == -1
    events_at = [scores[outside]]
    events_delta = [profile.fp * layout.outside_weight[outside]]
    inside = np.flatnonzero(layout.window >= 0)
    if inside.size:
        group = layout.window[inside]
        order = np.lexsort((-scores[inside], group))  # by window, then score descending
        group, points = group[order], inside[order]
        earned = profile.tp * layout.in_window_weight[points]  # in (0, A_TP]
        offset = group * (2.0 * profile.tp + 1.0)  # makes a running max restart per window
        best = np.maximum.accumulate(earned + offset) - offset
        first = np.r_[True, group[1:] != group[:-1]]
        previous = np.where(first, -profile.fn, np.r_[0.0, best[:-1]])
        events_at.append(scores[points])
        events_delta.append(best - previous)
    return Sweep(-profile.fn * len(nab_file.windows), np.concatenate(events_at), np.concatenate(events_delta))


def sweep_corpus(files: Sequence[NabFile], scores: Mapping[str, np.ndarray], profile: Profile) -> Sweep:
    total = Sweep(0.0, np.empty(0), np.empty(0))
    for nab_file in files:
        total = total + sweep_file(nab_file, scores[nab_file.name], profile)
    return total


def null_score(files: Sequence[NabFile], profile: Profile) -> float:
    return -profile.fn * sum(len(f.windows) for f in files)


def perfect_score(files: Sequence[NabFile], profile: Profile) -> float:
    return profile.tp * sum(len(f.windows) for f in files)


def normalise(raw: float, null: float, perfect: float) -> float:
    """100 x (raw - null) / (perfect - null): 0 for the null detector, 100 for the perfect one."""
    if perfect == null:
        raise BadConfig("the corpus has no anomaly window: NAB's normalised score is undefined")
    return 100.0 * (raw - null) / (perfect - null)


@dataclass(frozen=True)
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    normalised: float
    files: tuple[FileScore, ...]


def evaluate(files: Sequence[NabFile], scores: Mapping[str, np.ndarray], profile: Profile) -> ProfileResult:
    """NAB's protocol: one threshold for the whole corpus, the one that maximises the raw score."""
    threshold, raw = sweep_corpus(files, scores, profile).best()
    per_file = tuple(score_file(f, scores[f.name], threshold, profile) for f in files)
    normalised = normalise(raw, null_score(files, profile), perfect_score(files, profile))
    return ProfileResult(profile.name, threshold, raw, normalised, per_file)


def leave_one_category_out(
    files: Sequence[NabFile], scores: Mapping[str, np.ndarray], profile: Profile
) -> tuple[float, dict[str, float]]:
    """Each category scored at the threshold tuned on the other categories; the raw scores summed and
    normalised over the corpus. Returns (normalised score, threshold used per held-out category)."""
    categories = sorted({f.category for f in files})
    raw, used = 0.0, {}
    for held_out in categories:
        train = [f for f in files if f.category != held_out]
        test = [f for f in files if f.category == held_out]
        threshold, _ = sweep_corpus(train, scores, profile).best()
        used[held_out] = threshold
        raw += sum(score_file(f, scores[f.name], threshold, profile).score for f in test)
    return normalise(raw, null_score(files, profile), perfect_score(files, profile)), used


def score_detector(files: Sequence[NabFile], run: Callable[[NabFile], np.ndarray]) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(run(f), dtype=float) for f in files}


# ---------------------------------------------------------------------------------------- published


def read_published_rows(path: Path) -> dict[str, PublishedRow]:
    """A published `<detector>_<profile>_scores.csv`, per file name (the `Totals` row under "Totals")."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as exc:
        raise BadTable(f"{path}: unreadable ({exc})") from None
    needed = ["Detector", "File", "Threshold", "Score", "TP", "TN", "FP", "FN", "Total_Count"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise BadTable(f"{path}: missing column {missing[0]!r}")
    rows = {}
    for row in frame.itertuples(index=False):
        name = "Totals" if row.Detector == "Totals" else str(row.File)
        threshold = float(row.Threshold) if pd.notna(row.Threshold) else math.nan
        rows[name] = PublishedRow(
            name, threshold, float(row.Score), int(row.TP), int(row.TN), int(row.FP), int(row.FN),
            int(row.Total_Count),
        )  # fmt: skip
    return rows


def read_final_results(path: Path) -> dict[str, dict[str, float]]:
    """`results/final_results.json`: detector -> profile -> normalised score."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadTable(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise BadTable(f"{path}: expected an object of detectors")
    return {str(d): {str(p): float(v) for p, v in profiles.items()} for d, profiles in data.items()}


# ---------------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class DetectorRun:
    """A detector's scores on every file and the time it took (one process, one core)."""

    name: str
    scores: dict[str, np.ndarray]
    seconds: float

    @property
    def points(self) -> int:
        return sum(len(s) for s in self.scores.values())


def run_detector(name: str, files: Sequence[NabFile], score: Callable[[NabFile], np.ndarray]) -> DetectorRun:
    started = time.perf_counter()
    scores = {f.name: np.asarray(score(f), dtype=float) for f in files}
    return DetectorRun(name, scores, time.perf_counter() - started)


def benchmark_report(
    files: Sequence[NabFile], runs: Sequence[DetectorRun], published: Mapping[str, Mapping[str, float]]
) -> dict[str, object]:
    """Per detector and profile: NAB's corpus-tuned threshold and normalised score, counts, the
    leave-one-category-out score, points per second; the published scores beside them."""
    detectors: dict[str, object] = {}
    loco: dict[str, dict[str, object]]
    for run in runs:
        profiles = {}
        loco = {}
        for profile in PROFILES:
            result = evaluate(files, run.scores, profile)
            profiles[profile.name] = {
                "score": round(result.normalised, 2),
                "threshold": None if result.threshold == NO_DETECTION else round(result.threshold, 6),
                "raw": round(result.raw, 4),
                "tp_points": sum(f.tp for f in result.files),
                "fp_points": sum(f.fp for f in result.files),
                "windows_detected": sum(
                    _windows_detected(f, run.scores[f.name], result.threshold) for f in files
                ),
            }
            if len({f.category for f in files}) < 2:  # nothing left to tune on
                loco[profile.name] = {"score": None, "thresholds": {}}
                continue
            held_out, used = leave_one_category_out(files, run.scores, profile)
            loco[profile.name] = {"score": round(held_out, 2), "thresholds": used}
        detectors[run.name] = {
            "profiles": profiles,
            "leave_one_category_out": loco,
            "points_per_second": round(run.points / max(run.seconds, 1e-9)),
            "seconds": round(run.seconds, 3),
        }
    return {
        "corpus": {
            "files": len(files),
            "windows": sum(len(f.windows) for f in files),
            "points": sum(len(f.values) for f in files),
            "categories": sorted({f.category for f in files}),
        },
        "detectors": detectors,
        "published": {d: {p: round(v, 2) for p, v in s.items()} for d, s in published.items()},
    }


def _windows_detected(nab_file: NabFile, scores: np.ndarray, threshold: float) -> int:
    start = nab_file.probationary_length
    return sum(bool((scores[max(a, start) : b + 1] >= threshold).any()) for a, b in nab_file.windows)


def published_results(dataset: Path) -> dict[str, dict[str, float]]:
    """`<dataset>/reference/final_results.json` when the corpus carries it, else nothing to compare with."""
    path = Path(dataset) / "reference" / "final_results.json"
    return read_final_results(path) if path.is_file() else {}


def run_nab_benchmark(
    files: Sequence[NabFile], published: Mapping[str, Mapping[str, float]]
) -> dict[str, object]:
    """Our detector (`agents.anomaly.StreamDetector`, default configuration) and the windowed-Gaussian
    baseline, each run online over every file in one process, scored as NAB scores."""
    from agents.anomaly import StreamDetector, windowed_gaussian_scores

    runs = [
        run_detector("awo", files, lambda f: StreamDetector().score_series(f.values, f.timestamps)),
        run_detector("windowed_gaussian", files, lambda f: windowed_gaussian_scores(f.values)),
    ]
    report = benchmark_report(files, runs, published)
    report["default_threshold"] = StreamDetector.threshold
    return report
