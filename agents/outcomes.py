"""What the agents decided and what came of it, as tables read off the audit log's records: gates (with
overrides), test time planned against the full suite and the CI failures a plan would have missed, and
rollouts with their rollbacks and the changes they blamed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from agents.engine import current_gate
from agents.vocabulary import GATES
from features.errors import BadTable

DECISION_COLUMNS = [
    "decision_id", "decided_at", "sha", "services", "gate", "final_gate", "overridden", "probability",
    "band", "planned_s", "selected_s", "budget_s", "planned_tests",
]  # fmt: skip
ROLLOUT_COLUMNS = [
    "plan_id", "decision_id", "goal", "outcome", "executor", "rolled_back", "failed_tasks", "why",
    "incidents", "approved_by", "finished_at",
]  # fmt: skip


def decisions_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per decision record: its first sha and services, the gate decided and the gate after its
    overrides, the risk, and the test plan: its expected time (`planned_s`), the part of it spent on the
    known tests it selected (`selected_s`; the rest is suites without a test history, at their policy
    cost) and those tests (`planned_tests`: a frozenset of (suite, test_id)). Schema:
    DECISION_COLUMNS; decided_at is a UTC Timestamp, probability NaN when the change was not scored."""
    decisions: dict[str, dict[str, Any]] = {}
    overrides: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.get("kind") == "decision":
            decisions.setdefault(record["decision_id"], record)
        elif record.get("kind") == "override":
            overrides.setdefault(record["decision_id"], []).append(record)
    rows = []
    for decision_id, record in decisions.items():
        d = record.get("decision")
        if not isinstance(d, dict) or "gate" not in d:
            raise BadTable(f"audit log: decision {decision_id} has no decision.gate")
        plan = d.get("test_plan") or {}
        rows.append(
            {
                "decision_id": decision_id,
                "decided_at": pd.Timestamp(d["decided_at"]),
                "sha": (d.get("shas") or [None])[0],
                "services": tuple(d.get("services") or ()),
                "gate": d["gate"],
                "final_gate": current_gate(record, overrides.get(decision_id, [])),
                "overridden": decision_id in overrides,
                "probability": float("nan") if d.get("probability") is None else float(d["probability"]),
                "band": d.get("band"),
                "planned_s": float(plan.get("planned_s") or 0.0),
                "selected_s": float(sum(t.get("duration_s") or 0.0 for t in plan.get("tests") or ())),
                "budget_s": float(plan.get("budget_s") or 0.0),
                "planned_tests": frozenset((t["suite"], t["test_id"]) for t in plan.get("tests") or ()),
            }
        )
    frame = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    return frame.sort_values("decided_at", kind="stable").reset_index(drop=True)


def gate_counts(decisions: pd.DataFrame, column: str = "final_gate") -> pd.Series:
    """How many decisions ended at each gate, in the policy's order (zeros kept)."""
    return decisions[column].value_counts().reindex(list(GATES), fill_value=0).astype(int)


def plan_savings(decisions: pd.DataFrame, tests: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per decision: the time of running every known test (each at its mean duration) instead of the
    ones the plan selected, both beside the plan's suites without a test history (the same policy cost
    either way), so `saved_s` is what the selection saved; and, where CI ran on the decided sha, the tests
    that really failed there (last attempt failed: a pass on retry is a flake) and those of them the plan
    left out. `tests`: the ingested test table (suite, test_id, mean_duration_s); `runs`: raw test runs
    (sha, suite, test_id, outcome, attempt). Columns: decision_id, sha, full_suite_s, planned_s, saved_s,
    ci_failures, missed."""
    for frame, what, columns in (
        (tests, "tests", ["suite", "test_id", "mean_duration_s"]),
        (runs, "test runs", ["sha", "suite", "test_id", "outcome", "attempt"]),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise BadTable(f"{what}: missing column(s) {', '.join(missing)}")
    every_known_s = float(tests["mean_duration_s"].sum())
    last = runs.sort_values("attempt", kind="stable").groupby(["sha", "suite", "test_id"]).tail(1)
    failed = last[last["outcome"] == "failed"]
    failing: dict[str, set[tuple[str, str]]] = {}
    for sha, suite, test_id in failed[["sha", "suite", "test_id"]].itertuples(index=False):
        failing.setdefault(sha, set()).add((suite, test_id))
    rows = []
    for row in decisions.itertuples(index=False):
        found = failing.get(row.sha, set())
        rows.append(
            {
                "decision_id": row.decision_id,
                "sha": row.sha,
                "full_suite_s": every_known_s + row.planned_s - row.selected_s,
                "planned_s": row.planned_s,
                "saved_s": every_known_s - row.selected_s,
                "ci_failures": len(found),
                "missed": len(found - set(row.planned_tests)),
            }
        )
    return pd.DataFrame(
        rows, columns=["decision_id", "sha", "full_suite_s", "planned_s", "saved_s", "ci_failures", "missed"]
    )


def rollouts_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished rollout (`plan_run` record): its outcome, whether anything was rolled back,
    the tasks that failed and why (from the plan's re-plans), the incidents it opened. Schema:
    ROLLOUT_COLUMNS; finished_at is a UTC Timestamp."""
    rows = []
    for record in records:
        if record.get("kind") != "plan_run":
            continue
        tasks: dict[str, str] = record.get("tasks") or {}
        replans = record.get("replans") or []
        rows.append(
            {
                "plan_id": record.get("plan_id"),
                "decision_id": record.get("decision_id"),
                "goal": record.get("goal"),
                "outcome": record.get("outcome"),
                "executor": record.get("executor"),
                "rolled_back": any(t.startswith("rollback") and s == "succeeded" for t, s in tasks.items()),
                "failed_tasks": tuple(t for t, s in tasks.items() if s == "failed"),
                "why": "; ".join(str(r.get("why", "")) for r in replans if r.get("why")),
                "incidents": tuple(record.get("incidents") or ()),
                "approved_by": record.get("approved_by"),
                "finished_at": pd.Timestamp(record["finished_at"]) if record.get("finished_at") else pd.NaT,
            }
        )
    frame = pd.DataFrame(rows, columns=ROLLOUT_COLUMNS)
    frame["finished_at"] = pd.to_datetime(frame["finished_at"], utc=True)
    return frame


def culprits(rollouts: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """The change behind each rolled-back rollout, with the risk and gate it was decided with (NaN/None
    for a rollout planned without a decision). Columns: plan_id, decision_id, sha, services, probability,
    final_gate, failed_tasks, why."""
    rolled = rollouts[rollouts["rolled_back"]]
    joined = rolled.merge(
        decisions[["decision_id", "sha", "services", "probability", "final_gate"]],
        on="decision_id",
        how="left",
    )
    return joined[
        ["plan_id", "decision_id", "sha", "services", "probability", "final_gate", "failed_tasks", "why"]
    ].reset_index(drop=True)
