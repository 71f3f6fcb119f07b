"""Evaluation plots logged with each training run (ROC, calibration curve, effort curve), and the same
charts drawn on a given axes for several models at once, with the notebooks' rate and contribution bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd


def save_evaluation_plots(y, probability, effort, directory: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    from models.evaluation import effort_curve

    y = np.asarray(y, dtype=int)
    paths = []
    fig, ax = plt.subplots(figsize=(5, 4))
    fpr, tpr, _ = roc_curve(y, probability)
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC — {title}")
    ax.legend()
    paths.append(_save(fig, directory / "roc.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    observed, predicted = calibration_curve(y, probability, n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, "o-", label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title=f"Calibration — {title}")
    ax.legend()
    paths.append(_save(fig, directory / "calibration.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    x, found = effort_curve(y, probability, effort)
    ox, ofound = effort_curve(y, y, effort)
    ax.plot(x, found, label="model (probability / effort)")
    ax.plot(ox, ofound, "--", label="optimal")
    ax.axvline(0.2, color="grey", lw=0.5)
    ax.set(
        xlabel="share of changed lines inspected", ylabel="share of defects found", title=f"Effort — {title}"
    )
    ax.legend()
    paths.append(_save(fig, directory / "effort.png"))
    plt.close("all")
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


# --- drawing on a given axes, for the analyst notebooks: several named scores on one chart -------------


def plot_roc(ax, y, scores: Mapping[str, np.ndarray]) -> None:
    """ROC curve of each named score, with its AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y, dtype=int)
    for name, score in scores.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(fontsize="small")


def plot_calibration(ax, y, scores: Mapping[str, np.ndarray], n_bins: int = 10) -> None:
    """Observed defect frequency against predicted probability (quantile bins) for each named score."""
    from sklearn.calibration import calibration_curve

    y = np.asarray(y, dtype=int)
    for name, score in scores.items():
        observed, predicted = calibration_curve(y, score, n_bins=n_bins, strategy="quantile")
        ax.plot(predicted, observed, "o-", label=name)
    top = max(float(np.max(s)) for s in scores.values()) if scores else 1.0
    ax.plot([0, top], [0, top], "--", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title="Calibration")
    ax.legend(fontsize="small")


def plot_effort(ax, y, scores: Mapping[str, np.ndarray], effort) -> None:
    """Share of defects found against share of changed lines inspected (by score / effort) for each named
    score, with the optimal ordering and the 20% effort mark."""
    from models.evaluation import effort_curve, popt

    y = np.asarray(y, dtype=int)
    for name, score in scores.items():
        x, found = effort_curve(y, score, effort)
        ax.plot(x, found, label=f"{name} (Popt {popt(y, score, effort):.3f})")
    ox, ofound = effort_curve(y, y, effort)
    ax.plot(ox, ofound, "--", color="grey", label="optimal")
    ax.axvline(0.2, color="grey", lw=0.5)
    ax.set(xlabel="share of changed lines inspected", ylabel="share of defects found", title="Effort")
    ax.legend(fontsize="small")


def plot_rates(ax, table: pd.DataFrame, category: str, title: str) -> None:
    """A bar per row of a defect-rate table (columns `category`, commits, defect_rate), each bar labelled
    with its number of commits."""
    bars = ax.bar(table[category].astype(str), table["defect_rate"].fillna(0.0), color="tab:red", alpha=0.7)
    for bar, n in zip(bars, table["commits"], strict=True):
        ax.annotate(f"n={n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize="x-small")  # fmt: skip
    ax.set(ylabel="defect rate", title=title)
    ax.tick_params(axis="x", labelrotation=30, labelsize="small")


def plot_contributions(ax, contributions: pd.Series, title: str, top: int = 8) -> None:
    """The `top` largest contributions (log-odds) of one scored commit, raising in red, lowering in blue;
    the bias and features that contributed nothing are left out."""
    parts = contributions.drop(labels=["bias"], errors="ignore")
    parts = parts[parts != 0]
    parts = parts.reindex(parts.abs().sort_values(ascending=False).index[:top])[::-1]
    ax.barh(
        parts.index.astype(str), parts.to_numpy(), color=["tab:red" if v > 0 else "tab:blue" for v in parts]
    )
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(xlabel="contribution (log-odds)", title=title)
