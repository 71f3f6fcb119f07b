"""The risk gate replayed on real history: per project, train the risk model on the first 80% of commits,
gate the last 20% in time order with the policy's bands, and measure what was fast-tracked and what was
gated, beside a gate on lines changed alone (la + ld) that fast-tracks and gates as many commits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.gating import BandName, RiskBands, RiskSignal, band_of
from features.change_metrics import KAMEI_METRICS
from features.errors import AwoError
from models.jit_benchmark import load_project
from models.risk_model import ModelConfig, RiskModel

# The default policy's gate per band (agents/default_policy.yaml `gates:`).
GATE_OF_BAND: dict[BandName, str] = {
    "low": "fast_track",
    "medium": "standard",
    "high": "senior_review",
    "critical": "block",
}
GATED = ("senior_review", "block")
TRAIN_SHARE = 0.8
METRICS = ("fast_track_share", "fast_track_defect_ratio", "gated_share", "gated_defect_share")


@dataclass(frozen=True)
class ScoredReplay:
    """A project's replay period, scored by a model trained on the period before it. Arrays are in time
    order, one entry per replayed commit: `probability` (calibrated), `size` (la + ld), `bug` (0/1)."""

    project: str
    rows: int
    reference: dict[str, float]
    probability: np.ndarray
    size: np.ndarray
    bug: np.ndarray


def score_history(
    frame: pd.DataFrame, features: list[str], name: str, config: ModelConfig | None = None
) -> ScoredReplay:
    """Train on the first 80% of `frame`'s rows and score the rest. `frame`: one row per commit in time
    order, with `features` (la and ld among them or beside them), `bug` (int 0/1) and `committed_at`
    (datetime). Only training rows reach the model and the reference."""
    missing = [c for c in [*features, "la", "ld", "bug", "committed_at"] if c not in frame.columns]
    if missing:
        raise AwoError(f"{name}: history lacks columns {missing}")
    n_train = int(len(frame) * TRAIN_SHARE)
    train, replay = frame.iloc[:n_train], frame.iloc[n_train:]
    model = RiskModel(features, config, name=f"gate-{name}").fit(train, train["bug"], train["committed_at"])
    return ScoredReplay(
        project=name,
        rows=len(frame),
        reference=model.reference_,  # the held-out slices' score quantiles, as stored with a model
        probability=np.asarray(model.predict_proba(replay), dtype=float),
        size=(replay["la"] + replay["ld"]).to_numpy(dtype=float),
        bug=replay["bug"].to_numpy(dtype=int),
    )


def awo_gates(scored: ScoredReplay, bands: RiskBands) -> np.ndarray:
    """The gate of each replayed commit, through `band_of` as a decision would call it."""
    first = RiskSignal.from_reference(0.0, scored.reference)  # the reference is read once per replay
    signals = [RiskSignal(float(p), first.quantiles, first.base_rate) for p in scored.probability]
    return np.array([GATE_OF_BAND[band_of(s, bands)] for s in signals], dtype=object)


def lines_changed_gates(size: np.ndarray, fast_tracked: int, gated: int) -> np.ndarray:
    """The baseline: fast-track the `fast_tracked` smallest changes, send the `gated` largest to senior
    review, the rest standard; ties go to the earlier commit (stable sort), so the shares match exactly."""
    n = len(size)
    if fast_tracked + gated > n:
        raise ValueError(f"cannot fast-track {fast_tracked} and gate {gated} of {n} commits")
    gates = np.full(n, "standard", dtype=object)
    gates[np.argsort(-size, kind="stable")[:gated]] = "senior_review"
    gates[np.argsort(size, kind="stable")[:fast_tracked]] = "fast_track"
    return gates


def gate_metrics(gates: np.ndarray, bug: np.ndarray) -> dict[str, float]:
    """Shares and defect figures of one gating of a replay period."""
    fast = gates == "fast_track"
    gated = np.isin(gates, GATED)
    base = float(bug.mean()) if len(bug) else float("nan")
    return {
        "replay_rows": float(len(bug)),
        "base_rate": base,
        "fast_track_share": float(fast.mean()),
        "fast_track_defect_ratio": float(bug[fast].mean() / base)
        if fast.any() and base > 0
        else float("nan"),
        "gated_share": float(gated.mean()),
        "gated_defect_share": float(bug[gated].sum() / bug.sum()) if bug.sum() else float("nan"),
    }


def compare(scored: ScoredReplay, bands: RiskBands) -> dict[str, dict[str, float]]:
    """awo's gate and the lines-changed gate at the same fast-track and gated counts, on one replay."""
    gates = awo_gates(scored, bands)
    baseline = lines_changed_gates(
        scored.size, int((gates == "fast_track").sum()), int(np.isin(gates, GATED).sum())
    )
    awo = gate_metrics(gates, scored.bug)
    awo.update({f"{band}_share": float((gates == gate).mean()) for band, gate in GATE_OF_BAND.items()})
    return {"awo": awo, "lines_changed": gate_metrics(baseline, scored.bug)}


def summarise(per_project: dict[str, dict[str, dict[str, float]]], bands: RiskBands) -> dict[str, Any]:
    """The result object: per method, per project and `mean`; the bands used; awo's wins."""
    result: dict[str, Any] = {}
    for method in ("awo", "lines_changed"):
        rows = {project: figures[method] for project, figures in per_project.items()}
        means = pd.DataFrame(rows).T.mean(numeric_only=True)
        result[method] = {**rows, "mean": {k: float(v) for k, v in means.items()}}
    wins = [
        p
        for p, f in per_project.items()
        if f["awo"]["fast_track_defect_ratio"] < f["lines_changed"]["fast_track_defect_ratio"]
    ]
    result["bands"] = bands.model_dump()
    result["fast_track_wins"] = {"projects": wins, "count": len(wins), "of": len(per_project)}
    return result


def replay_history(
    frame: pd.DataFrame, features: list[str], name: str = "history", bands: RiskBands | None = None
) -> dict[str, Any]:
    """The gate replayed on one history (e.g. the demo world's commits with their features and labels;
    schema as in `score_history`): the same result object as `run_gate_benchmark`, with one project."""
    bands = bands or RiskBands()
    return summarise({name: compare(score_history(frame, features, name), bands)}, bands)


def score_dataset(dataset: Path) -> list[ScoredReplay]:
    """Every `*.csv` of a folder in the ISSTA'21 JIT schema, trained and scored (file order: by name)."""
    files = sorted(Path(dataset).glob("*.csv"))
    if not files:
        raise AwoError(f"no CSV files in {dataset}")
    return [score_history(load_project(path), list(KAMEI_METRICS), path.stem) for path in files]


def run_gate_benchmark(
    dataset: Path, out: Path | None = None, bands: RiskBands | None = None
) -> dict[str, Any]:
    """The gating replay on every project of `dataset`: `{"awo": {project: figures, "mean": ...},
    "lines_changed": {...}, "bands": ..., "fast_track_wins": ...}`; written as JSON to `out` if given."""
    import json

    bands = bands or RiskBands()
    result = summarise({s.project: compare(s, bands) for s in score_dataset(dataset)}, bands)
    if out is not None:
        out.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    return result


def print_gate_table(result: dict[str, Any], console: Any = None) -> None:
    """The result as a rich table: per project, awo beside the lines-changed gate."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Risk gate replay: last 20% of each project, in time order")
    table.add_column("project", no_wrap=True)
    table.add_column("method", no_wrap=True)
    for column in ("fast-tracked", "FT defect ratio", "gated", "defects gated"):
        table.add_column(column, justify="right", no_wrap=True)
    projects = [p for p in result["awo"] if p != "mean"] + ["mean"]
    for project in projects:
        for method in ("awo", "lines_changed"):
            f = result[method][project]
            table.add_row(
                project if method == "awo" else "",
                method,
                f"{f['fast_track_share']:.3f}",
                f"{f['fast_track_defect_ratio']:.3f}",
                f"{f['gated_share']:.3f}",
                f"{f['gated_defect_share']:.3f}",
                end_section=method == "lines_changed",
            )
    console.print(table)
    wins = result.get("fast_track_wins")
    if wins:
        console.print(
            f"awo fast-tracks at a lower defect ratio than lines changed on {wins['count']} of {wins['of']} "
            f"projects ({', '.join(wins['projects']) or 'none'})"
        )
