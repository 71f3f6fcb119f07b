"""The analyst notebooks run top to bottom on the data root of a small `awo demo` run (mined, labelled,
trained, promoted, decided through the risk API, a canary rolled back, both models retrained), render their
plots and print numbers that match the data; the committed notebooks carry no outputs. Also the pure helpers
they call, on hand-made rows."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agents.outcomes import culprits, decisions_frame, gate_counts, plan_savings, rollouts_frame
from features.errors import BadTable
from models.analysis import auc_by_period, defect_rate_by_bins, feature_drift, label_quality
from tests.conftest import DemoRun, git

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 600  # one cell on a loaded 2-core machine: MLflow and Feast imports take tens of seconds
FIGURES = {"01_change_risk_exploration": 3, "02_model_evaluation": 4, "03_decisions_and_outcomes": 4}


@dataclass(frozen=True)
class DemoRoot:
    """What the notebooks read: the data root `awo demo` left behind and the counts to check them with,
    taken from the root itself (the world's git history, the audit log, the feedback files)."""

    data: Path
    tables: Path
    commits: int
    decided: int
    rollouts: int
    rolled_back: int
    feedback: int


@pytest.fixture(scope="module")
def demo_root(demo_run: DemoRun) -> DemoRoot:
    """The data root of the session's `awo demo` run (tests/conftest.py): the notebooks run on what users
    run them on."""
    records = demo_run.audit()
    plans = [str(r["plan_id"]) for r in records if r["kind"] == "plan_run"]
    feedback = pd.read_csv(demo_run.settings.data_dir / "feedback" / "deployments.csv")
    rolled_back_ids = feedback.loc[feedback["outcome"] == "rolled-back", "deploy_id"]
    return DemoRoot(
        data=demo_run.settings.data_dir,
        tables=demo_run.root / "tables",
        commits=int(git(demo_run.root / "world" / "repo", "rev-list", "--count", "HEAD")),
        decided=sum(r["kind"] == "decision" for r in records),
        rollouts=len(plans),
        rolled_back=sum(rolled_back_ids.str.contains(plan, regex=False).any() for plan in plans),
        feedback=len(feedback),
    )


def execute(name: str, data: Path) -> tuple[str, int]:
    """Run a notebook on the current interpreter's kernel with AWO_DATA_DIR set; its printed text and how
    many image outputs it rendered."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"AWO_DATA_DIR": str(data)}
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",  # the .venv's own kernelspec: "python" resolves to this interpreter
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(env=env)
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                text.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                images += int("image/png" in output.data or "image/svg+xml" in output.data)
    return "".join(text), images


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not printed in:\n{text}"
    return float(found.group(1))


def test_committed_notebooks_carry_no_outputs_and_no_execution_counts():
    import nbformat

    for name in FIGURES:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code, name
        assert all(c.outputs == [] and c.execution_count is None for c in code), (
            f"{name}: run `python scripts/strip_notebooks.py` before committing"
        )


@pytest.mark.slow
def test_change_risk_exploration_runs_and_its_numbers_match_the_tables(demo_root):
    text, images = execute("01_change_risk_exploration", demo_root.data)
    commits = pd.read_parquet(demo_root.tables / "commits.parquet")
    known = commits[commits["bug_inducing"].notna()]
    assert images >= FIGURES["01_change_risk_exploration"]
    assert number(r"commits (\d+),", text) == len(commits) == demo_root.commits
    assert number(r"labelled (\d+),", text) == len(known)
    assert number(r"bug-inducing (\d+),", text) == known["bug_inducing"].astype(bool).sum() > 0
    assert 0.5 < number(r"precision ([\d.]+)", text) <= 1.0
    assert 0.0 < number(r"recall ([\d.]+)", text) < 1.0


@pytest.mark.slow
def test_model_evaluation_compares_two_registered_versions_on_the_held_out_period(demo_root):
    text, images = execute("02_model_evaluation", demo_root.data)
    assert images >= FIGURES["02_model_evaluation"]
    assert re.search(r"models: v1 \(\w+\) on change_risk_v\d, v2 \(\w+\) on change_risk_v\d", text), text
    held_out = number(r"held-out period \S+ to \S+: (\d+) commits", text)
    assert 0 < held_out < demo_root.commits and number(r"commits, (\d+) bug-inducing", text) > 0
    assert number(r"features checked (\d+)", text) > 10


@pytest.mark.slow
def test_decisions_and_outcomes_shows_the_audit_log_rollback_and_retrain(demo_root):
    text, images = execute("03_decisions_and_outcomes", demo_root.data)
    assert images >= FIGURES["03_decisions_and_outcomes"]
    assert "audit log ok" in text
    assert number(r"decisions (\d+),", text) == demo_root.decided
    assert number(r"rollouts (\d+), rolled back", text) == demo_root.rollouts > 0
    assert number(r"rolled back (\d+);", text) == demo_root.rolled_back > 0
    assert number(r"culprits of the rollbacks: (\d+)", text) == demo_root.rolled_back
    assert ("no rollout kept so far" in text) == (demo_root.rolled_back == demo_root.rollouts)
    assert 0 <= number(r"\((-?\d+)% saved\)", text) <= 100
    # staging and production of each rollout, every row ingested by the retrain as a deploy-failure label
    assert number(r"feedback deployments (\d+)", text) == demo_root.feedback >= 2 * demo_root.rollouts
    assert number(r"ingested as labels (\d+)", text) == demo_root.feedback
    for name in ("change-risk", "deploy-failure"):
        assert re.search(rf"{name}: v1 -> v2: test rows (\d+) -> (\d+)", text), text


# --- the pure helpers, on rows small enough to check by hand -------------------------------------------


def _decision(decision_id: str, sha: str, gate: str, p: float, tests: list[tuple[str, str, float]]) -> dict:
    plan = {
        "planned_s": sum(d for *_, d in tests) + 60.0,  # 60 s of a suite without a test history
        "budget_s": 600.0,
        "tests": [{"suite": s, "test_id": t, "duration_s": d} for s, t, d in tests],
    }
    return {
        "kind": "decision",
        "decision_id": decision_id,
        "decision": {"gate": gate, "decided_at": "2026-11-24T10:00:00Z", "shas": [sha], "services": ["pay"],
                     "probability": p, "band": "low", "test_plan": plan},
    }  # fmt: skip


RECORDS = [
    _decision("d1", "aaa", "standard", 0.3, [("unit", "t1", 10.0)]),
    _decision("d2", "bbb", "fast_track", 0.05, []),
    {"kind": "override", "decision_id": "d1", "from_gate": "standard", "to_gate": "block", "who": "alice"},
    {"kind": "plan_run", "decision_id": "d1", "plan_id": "p1", "goal": "ship aaa of pay to production",
     "outcome": "blocked", "executor": "dry-run", "finished_at": "2026-11-24T11:00:00Z",
     "tasks": {"canary:pay": "failed", "rollback:pay:production": "succeeded", "notify": "succeeded"},
     "replans": [{"failed_task": "canary:pay", "why": "error spike", "added": [], "cancelled": []}],
     "incidents": ["awo-p1"]},
    {"kind": "plan_run", "decision_id": "d2", "plan_id": "p2", "goal": "ship bbb of pay to production",
     "outcome": "succeeded", "executor": "dry-run", "finished_at": "2026-11-24T12:00:00Z",
     "tasks": {"deploy:pay": "succeeded", "promote:pay": "succeeded"}, "replans": [], "incidents": []},
]  # fmt: skip


def test_an_override_sets_the_final_gate_and_counts_follow_the_policy_order():
    decisions = decisions_frame(RECORDS).set_index("decision_id")
    assert decisions.loc["d1", "gate"] == "standard" and decisions.loc["d1", "final_gate"] == "block"
    assert bool(decisions.loc["d1", "overridden"]) and not bool(decisions.loc["d2", "overridden"])
    assert decisions.loc["d1", "planned_s"] == 70.0 and decisions.loc["d1", "selected_s"] == 10.0
    assert gate_counts(decisions).to_dict() == {
        "fast_track": 1,
        "standard": 0,
        "senior_review": 0,
        "block": 1,
    }


def test_time_saved_counts_only_the_selected_tests_and_a_flake_is_no_missed_failure():
    decisions = decisions_frame(RECORDS)
    tests = pd.DataFrame(
        {
            "suite": ["unit", "unit", "unit"],
            "test_id": ["t1", "t2", "t3"],
            "mean_duration_s": [10.0, 20.0, 30.0],
        }
    )
    runs = pd.DataFrame(
        {
            "sha": ["aaa", "aaa", "aaa", "aaa"],
            "suite": ["unit"] * 4,
            "test_id": ["t1", "t2", "t3", "t3"],
            "outcome": ["failed", "failed", "failed", "passed"],  # t3 passed on retry: a flake
            "attempt": [1, 1, 1, 2],
        }
    )
    savings = plan_savings(decisions, tests, runs).set_index("decision_id")
    assert savings.loc["d1", "saved_s"] == 50.0 and savings.loc["d1", "full_suite_s"] == 120.0
    assert savings.loc["d1", "ci_failures"] == 2 and savings.loc["d1", "missed"] == 1  # t2, not t1 or t3
    assert savings.loc["d2", "ci_failures"] == 0 and savings.loc["d2", "saved_s"] == 60.0
    with pytest.raises(BadTable, match=r"test runs: missing column.*attempt"):
        plan_savings(decisions, tests, runs.drop(columns="attempt"))


def test_a_rollback_names_its_failed_task_and_the_change_it_blamed():
    rollouts = rollouts_frame(RECORDS).set_index("plan_id")
    assert bool(rollouts.loc["p1", "rolled_back"]) and not bool(rollouts.loc["p2", "rolled_back"])
    assert (
        rollouts.loc["p1", "failed_tasks"] == ("canary:pay",) and rollouts.loc["p1", "why"] == "error spike"
    )
    blamed = culprits(rollouts.reset_index(), decisions_frame(RECORDS))
    assert blamed[["plan_id", "sha", "final_gate"]].values.tolist() == [["p1", "aaa", "block"]]
    assert rollouts_frame(RECORDS[:3]).empty  # decisions only: no rollout yet


def test_label_quality_counts_against_the_truth_over_labelled_commits_only():
    commits = pd.DataFrame({"sha": list("abcde"), "bug_inducing": [True, True, False, False, None]})
    truth = pd.DataFrame({"sha": list("abcde"), "bug_inducing": [True, False, True, False, True]})
    quality = label_quality(commits, truth)
    assert (quality["tp"], quality["fp"], quality["fn"], quality["tn"]) == (1, 1, 1, 1)
    assert quality["precision"] == 0.5 and quality["recall"] == 0.5 and quality["unlabelled"] == 1
    with pytest.raises(BadTable, match=r"truth: 1 labelled commits have no row"):
        label_quality(commits, truth.iloc[1:])


def test_defect_rates_per_bin_and_auc_per_month():
    commits = pd.DataFrame({"exp": [0, 1, 10, 12, 50], "bug_inducing": [True, False, False, False, None]})
    table = defect_rate_by_bins(commits, "exp", [0, 5, 20, np.inf])
    assert table["commits"].tolist() == [2, 2, 0] and table["defects"].tolist() == [1, 0, 0]
    assert table["defect_rate"].tolist()[:2] == [0.5, 0.0] and np.isnan(table["defect_rate"].iloc[2])
    at = pd.Series(pd.to_datetime(["2024-01-05", "2024-01-20", "2024-01-25", "2024-02-03"], utc=True))
    y = np.array([1, 0, 0, 1])
    monthly = auc_by_period(at, y, {"m": np.array([0.9, 0.1, 0.95, 0.5])}, "M")
    assert monthly["rows"].tolist() == [3, 1] and monthly["auc_m"].iloc[0] == 0.5
    assert np.isnan(monthly["auc_m"].iloc[1])  # one class only


def test_drift_finds_the_shifted_feature_and_not_the_stable_one():
    rng = np.random.default_rng(3)
    before = pd.DataFrame({"la": rng.normal(10, 2, 500), "nf": rng.normal(3, 1, 500)})
    after = pd.DataFrame({"la": rng.normal(16, 2, 300), "nf": rng.normal(3, 1, 300)})
    drift = feature_drift(before, after, ["nf", "la"]).set_index("feature")
    assert drift.index[0] == "la"
    assert drift.loc["la", "p_value"] < 1e-6 and drift.loc["la", "psi"] > 0.25
    assert drift.loc["nf", "p_value"] > 0.001 and drift.loc["nf", "psi"] < 0.1
