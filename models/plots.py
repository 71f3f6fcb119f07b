"""Evaluation plots logged with each training run: ROC, calibration curve, effort curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
