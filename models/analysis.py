"""Pure analyses behind the analyst notebooks: defect rates by a commit's traits, defects and fix delays
over time, SZZ label quality against a ground truth, AUC per period of a held-out span, feature drift."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from features.errors import BadTable
from models.evaluation import psi, reference


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BadTable(f"{what}: missing column(s) {', '.join(missing)}")


def labelled(commits: pd.DataFrame, label: str = "bug_inducing") -> pd.DataFrame:
    """The commits whose label is known (mature or blamed by a fix), with `label` as a bool."""
    _require(commits, [label], "commits")
    known = commits[commits[label].notna()].copy()
    known[label] = known[label].astype(bool)
    return known


def defect_rate_by_bins(
    commits: pd.DataFrame, column: str, edges: Sequence[float], label: str = "bug_inducing"
) -> pd.DataFrame:
    """Defect rate of the labelled commits per bin of `column` (left-closed bins between `edges`).
    Columns: bin (str), commits (int), defects (int), defect_rate (float)."""
    known = labelled(commits, label)
    _require(known, [column], "commits")
    bins = pd.cut(known[column].astype(float), bins=list(edges), right=False)
    grouped = known.groupby(bins, observed=False)[label].agg(["size", "sum"])
    return pd.DataFrame(
        {
            "bin": [str(b) for b in grouped.index],
            "commits": grouped["size"].to_numpy(dtype=int),
            "defects": grouped["sum"].to_numpy(dtype=int),
            "defect_rate": (grouped["sum"] / grouped["size"].replace(0, np.nan)).to_numpy(dtype=float),
        }
    )


def defect_rate_by_group(
    commits: pd.DataFrame, files: pd.DataFrame, group: str = "service", label: str = "bug_inducing"
) -> pd.DataFrame:
    """Defect rate of the labelled commits per value of a file-level `group` (service or subsystem): a
    commit that touches two groups counts in both. Columns: group, commits, defects, defect_rate; riskiest
    first."""
    _require(files, ["sha", group], "files")
    known = labelled(commits, label)[["sha", label]]
    touched = files.loc[files[group].fillna("").astype(str) != "", ["sha", group]].drop_duplicates()
    rows = touched.merge(known, on="sha")
    grouped = rows.groupby(group)[label].agg(["size", "sum"])
    out = pd.DataFrame(
        {
            "group": grouped.index.astype(str),
            "commits": grouped["size"].to_numpy(dtype=int),
            "defects": grouped["sum"].to_numpy(dtype=int),
        }
    )
    out["defect_rate"] = out["defects"] / out["commits"]
    return out.sort_values(["defect_rate", "commits"], ascending=False).reset_index(drop=True)


def defect_timeline(commits: pd.DataFrame, freq: str = "Q", label: str = "bug_inducing") -> pd.DataFrame:
    """Per period of commit time (a pandas period alias: "Q", "M"): commits, labelled commits, defects
    introduced, their rate among the labelled, and the median days until the fix of those fixed
    (`fix_delay_days`). Columns: period (Timestamp, UTC), commits, labelled, defects, defect_rate,
    median_fix_delay_days."""
    _require(commits, ["committed_at", label, "fix_delay_days"], "commits")
    frame = commits.assign(
        period=commits["committed_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period(freq)
    )
    rows = []
    for period, part in frame.groupby("period", sort=True):
        known = part[part[label].notna()]
        defects = int(known[label].astype(bool).sum())
        delays = part.loc[part[label].eq(True), "fix_delay_days"].dropna()
        rows.append(
            {
                "period": pd.Timestamp(period.start_time, tz="UTC"),
                "commits": len(part),
                "labelled": len(known),
                "defects": defects,
                "defect_rate": defects / len(known) if len(known) else float("nan"),
                "median_fix_delay_days": float(delays.median()) if len(delays) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def label_quality(
    commits: pd.DataFrame, truth: pd.DataFrame, label: str = "bug_inducing"
) -> dict[str, float]:
    """SZZ labels against a ground truth (`truth`: sha, bug_inducing), over the commits with a label:
    true/false positives and negatives, precision, recall, and how many commits have no label yet."""
    _require(truth, ["sha", "bug_inducing"], "truth")
    known = labelled(commits, label)[["sha", label]].rename(columns={label: "predicted"})
    joined = known.merge(truth[["sha", "bug_inducing"]].rename(columns={"bug_inducing": "actual"}), on="sha")
    if len(joined) < len(known):
        raise BadTable(f"truth: {len(known) - len(joined)} labelled commits have no row in the truth")
    predicted, actual = joined["predicted"].astype(bool), joined["actual"].astype(bool)
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    tn = int((~predicted & ~actual).sum())
    return {
        "labelled": float(len(joined)),
        "unlabelled": float(len(commits) - len(known)),
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "tn": float(tn),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
    }


def auc_by_period(
    at: pd.Series, y: np.ndarray, scores: Mapping[str, np.ndarray], freq: str = "M"
) -> pd.DataFrame:
    """AUC of each named score per calendar period of `at` (how a model decays over a held-out span).
    Columns: period (Timestamp, UTC), rows, positives, then one `auc_<name>` per score (NaN where the
    period holds a single class)."""
    y = np.asarray(y, dtype=int)
    times = pd.to_datetime(at, utc=True).dt.tz_localize(None).dt.to_period(freq)
    if len(times) != len(y) or any(len(np.asarray(s)) != len(y) for s in scores.values()):
        raise ValueError(f"auc_by_period: {len(y)} labels, times and scores must be as many")
    rows = []
    for period in sorted(times.unique()):
        mask = (times == period).to_numpy()
        row: dict[str, object] = {
            "period": pd.Timestamp(period.start_time, tz="UTC"),
            "rows": int(mask.sum()),
            "positives": int(y[mask].sum()),
        }
        both = len(np.unique(y[mask])) == 2
        for name, score in scores.items():
            row[f"auc_{name}"] = float(roc_auc_score(y[mask], np.asarray(score)[mask])) if both else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def feature_drift(
    reference_rows: pd.DataFrame, recent_rows: pd.DataFrame, features: Sequence[str]
) -> pd.DataFrame:
    """How far each feature's recent distribution moved from the reference (training) one: the two-sample
    Kolmogorov-Smirnov statistic and p-value, and the population stability index over the reference's
    decile bins (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major). Columns: feature, ks, p_value, psi;
    largest KS first."""
    rows = []
    for feature in features:
        _require(reference_rows, [feature], "reference rows")
        _require(recent_rows, [feature], "recent rows")
        ref = reference_rows[feature].to_numpy(dtype=float)
        new = recent_rows[feature].to_numpy(dtype=float)
        ref, new = ref[np.isfinite(ref)], new[np.isfinite(new)]
        if len(ref) == 0 or len(new) == 0:
            continue
        test = ks_2samp(ref, new)
        rows.append(
            {
                "feature": feature,
                "ks": float(test.statistic),
                "p_value": float(test.pvalue),
                "psi": psi(reference(ref), new),
            }
        )
    frame = pd.DataFrame(rows, columns=["feature", "ks", "p_value", "psi"])
    return frame.sort_values("ks", ascending=False).reset_index(drop=True)
