"""Honest evaluation of defect and failure models: time-ordered splits with a maturity gap, the usual
classification metrics and the effort-aware metrics of just-in-time defect prediction.

Effort-aware metrics (Kamei et al., TSE 2013; Huang et al.; JITLine, MSR 2021): commits are inspected in
order of predicted probability divided by effort (effort = la + ld, at least 1 line), every model —
baselines included — ranked the same way.
- Recall@20%Effort: share of defective commits found within the first 20% of the total effort.
- Effort@20%Recall: share of the total effort spent before 20% of the defective commits are found.
- Popt: 1 − (area(optimal) − area(model)) / (area(optimal) − area(worst)) under the curve of defects found
  against effort spent; the optimal model inspects by true defect density, the worst by its reverse.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

from features.tables import unix_seconds


@dataclass(frozen=True)
class TimeSplit:
    """Row positions of a time-ordered split: train, then validation (early stopping), then calibration,
    a gap for label maturity, then test. Every position of a later part is later in time."""

    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray
    test: np.ndarray


def time_split(
    times: pd.Series,
    test_share: float = 0.2,
    gap: pd.Timedelta = pd.Timedelta(0),
    validation_share: float = 0.1,
    calibration_share: float = 0.1,
) -> TimeSplit:
    """Split rows by time: the newest `test_share` is the test period; before it, a `gap` of rows is left
    out (their labels are not mature when the test period starts); the rest is train, validation and
    calibration, in that order."""
    t = unix_seconds(times)
    order = np.argsort(t, kind="stable")
    n = len(order)
    n_test = round(n * test_share)
    test = order[n - n_test :]
    if n_test == 0:
        raise ValueError("the test period is empty")
    before = order[: n - n_test]
    if gap > pd.Timedelta(0):
        before = before[t[before] < t[test[0]] - gap.total_seconds()]
    m = len(before)
    n_cal = round(m * calibration_share)
    n_val = round(m * validation_share)
    train_end = m - n_cal - n_val
    return TimeSplit(
        before[:train_end], before[train_end : train_end + n_val], before[train_end + n_val :], test
    )


def rolling_windows(
    times: pd.Series, train: pd.Timedelta, gap: pd.Timedelta, test: pd.Timedelta
) -> Iterator[tuple[pd.Timestamp, np.ndarray, np.ndarray]]:
    """(test start, train rows, test rows) of a sliding time-wise evaluation: train on a window, skip a
    gap, test on the next window, slide by the test length."""
    t = unix_seconds(times)
    window, skip, step = train.total_seconds(), gap.total_seconds(), test.total_seconds()
    start = t.min() + window + skip
    while start + step <= t.max() + 1:
        tr = np.flatnonzero((t >= start - skip - window) & (t < start - skip))
        te = np.flatnonzero((t >= start) & (t < start + step))
        if len(tr) and len(te):
            yield pd.Timestamp(start, unit="s", tz="UTC"), tr, te
        start += step


def effort_curve(y: np.ndarray, score: np.ndarray, effort: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative share of effort, cumulative share of defects found), inspecting by score / effort."""
    effort = np.maximum(np.asarray(effort, dtype=float), 1.0)
    order = np.lexsort((effort, -np.asarray(score, dtype=float) / effort))
    x = np.concatenate([[0.0], np.cumsum(effort[order]) / effort.sum()])
    y_sorted = np.asarray(y, dtype=float)[order]
    found = np.concatenate([[0.0], np.cumsum(y_sorted) / max(1.0, y_sorted.sum())])
    return x, found


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def recall_at_effort(y, score, effort, share: float = 0.2) -> float:
    x, found = effort_curve(y, score, effort)
    return float(np.interp(share, x, found))


def effort_at_recall(y, score, effort, share: float = 0.2) -> float:
    x, found = effort_curve(y, score, effort)
    return float(x[np.searchsorted(found, share - 1e-12)])


def popt(y, score, effort) -> float:
    y = np.asarray(y, dtype=float)
    effort = np.maximum(np.asarray(effort, dtype=float), 1.0)
    model = _area(*effort_curve(y, score, effort))
    optimal = _area(*effort_curve(y, y, effort))  # defective first, smallest first
    worst = _area(*_reverse_curve(y, effort))  # clean first, largest first
    return float(1 - (optimal - model) / (optimal - worst)) if optimal > worst else float("nan")


def _reverse_curve(y: np.ndarray, effort: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((-effort, y))  # clean first, then defective; within each, largest effort first
    x = np.concatenate([[0.0], np.cumsum(effort[order]) / effort.sum()])
    found = np.concatenate([[0.0], np.cumsum(y[order]) / max(1.0, y.sum())])
    return x, found


def classification_metrics(y, probability, effort, threshold: float = 0.5) -> dict[str, float]:
    """AUC, PR-AUC, Brier, F1 at `threshold`, and the effort-aware metrics."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(probability, dtype=float)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "f1": float(f1_score(y, p >= threshold, zero_division=0)),
        "recall_at_20_effort": recall_at_effort(y, p, effort),
        "effort_at_20_recall": effort_at_recall(y, p, effort),
        "popt": popt(y, p, effort),
        "positives": int(y.sum()),
        "rows": len(y),
    }


def best_f1_threshold(y, probability) -> float:
    """The probability threshold that maximises F1 (chosen on validation data, then fixed)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(probability, dtype=float)
    candidates = np.unique(np.quantile(p, np.linspace(0.05, 0.95, 91)))
    scores = [f1_score(y, p >= c, zero_division=0) for c in candidates]
    return float(candidates[int(np.argmax(scores))]) if len(candidates) else 0.5


QUANTILE_LEVELS: tuple[float, ...] = tuple(i / 100 for i in range(101))


def quantile_key(level: float) -> str:
    return f"q{round(level * 100):02d}"


def risk_reference(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The training-period reference stored with a model, which the agents' gate reads its bands against:
    `base_rate`, `rows` and the calibrated score at every percentile `q00` … `q100`. Pass probabilities of
    rows the booster did not fit (validation and calibration slices): scores of its own rows are
    optimistic."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if scores.size == 0 or scores.shape != labels.shape:
        raise ValueError(f"need as many labels as scores: {scores.size} scores, {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("reference scores must be finite")
    values = np.quantile(scores, QUANTILE_LEVELS)
    return {
        "base_rate": float(labels.mean()),
        "rows": float(scores.size),
        **{quantile_key(level): float(v) for level, v in zip(QUANTILE_LEVELS, values, strict=True)},
    }


def reference(values: np.ndarray, bins: int = 10) -> dict:
    """Quantile bin edges of a training-time distribution (each bin then holds ~1/bins of it)."""
    finite = values[np.isfinite(values)]
    edges = (
        np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1))) if len(finite) else np.array([0.0, 1.0])
    )
    counts = np.histogram(np.clip(finite, edges[0], edges[-1]), bins=edges)[0] if len(finite) else np.ones(1)
    return {"edges": edges.tolist(), "shares": (counts / max(1, counts.sum())).tolist()}


def psi(ref: dict, values: np.ndarray) -> float | None:
    """Population stability index of `values` against a reference; None with fewer than 20 values.
    Rules of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 major shift."""
    values = values[np.isfinite(values)]
    if len(values) < 20:
        return None
    edges = np.asarray(ref["edges"], dtype=float)
    expected = np.asarray(ref["shares"], dtype=float)
    actual = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0] / len(values)
    eps = 1e-4
    expected, actual = np.maximum(expected, eps), np.maximum(actual, eps)
    value = float(np.sum((actual - expected) * np.log(actual / expected)))
    return value if math.isfinite(value) else None
