"""`run_plan`: execute a plan's tasks one at a time in dependency order, record each status in the plan's
state file so a re-run resumes where the last one stopped, re-plan when a task fails (a failed canary
becomes rollback + block + incident), write incidents as ingestion rows, and audit the finished run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from agents.executor import Executor, TaskResult
from agents.feedback import record_incident
from agents.planner import (
    DONE,
    Plan,
    PlanError,
    Task,
    execution_order,
    load_plan,
    needs_approval,
    replan_on_failure,
    save_plan,
)
from features.errors import AwoError
from features.tables import feedback_file

Outcome = Literal["succeeded", "blocked", "failed", "paused"]
# 4: as `awo decide`'s block; 3: waits for a person (`awo rollout resume` or `abort`), as inconclusive
OUTCOME_EXIT: dict[Outcome, int] = {"succeeded": 0, "blocked": 4, "failed": 1, "paused": 3}


class AuditSink(Protocol):
    """What the runner needs of agents.audit.AuditLog."""

    def append(self, record: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class RunEvent:
    """What the runner tells `on_event` as it goes (the CLI prints `message`)."""

    kind: Literal["resumed", "started", "finished", "replanned", "paused"]
    message: str
    task_id: str | None = None
    status: str | None = None


class RunReport(BaseModel):
    plan: Plan
    outcome: Outcome
    ran: list[str]  # task ids run by this invocation, in order
    resumed_after: int  # tasks already finished when this invocation started
    incidents: list[str]  # incident ids written to the incidents file by this invocation
    incidents_path: str | None = None

    @property
    def exit_code(self) -> int:
        return OUTCOME_EXIT[self.outcome]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.plan.tasks:
            counts[task.status] = counts.get(task.status, 0) + 1
        return counts

    def summary_lines(self) -> list[str]:
        """What `awo run` prints at the end, in numbers."""
        plan = self.plan
        counts = self.counts()
        shown = ", ".join(f"{n} {status}" for status, n in counts.items())
        lines = [
            f"plan {plan.plan_id}: {plan.goal.describe()}: {self.outcome}",
            f"  {len(self.ran)} tasks run now"
            + (f" (resumed after {self.resumed_after} finished)" if self.resumed_after else "")
            + f"; all {len(plan.tasks)} tasks: {shown}",
        ]
        for replan in plan.replans:
            lines.append(
                f"  {replan.failed_task} failed: {replan.why}; re-planned: "
                f"+{', '.join(replan.added) or 'nothing'}; "
                f"cancelled {', '.join(replan.cancelled) or 'nothing'}"
            )
        for incident in self.incidents:
            lines.append(
                f"  incident {incident} recorded in {self.incidents_path} (`awo retrain` ingests it)"
            )
        return lines


def _next_task(plan: Plan) -> Task | None:
    """The first task in execution order that is due (pending, or running when a run was cut off) and whose
    dependencies are done. A task whose dependency failed or was cancelled is cancelled on the way."""
    by_id = {t.id: t for t in plan.tasks}
    for task_id in execution_order(plan):
        task = by_id[task_id]
        if task.status not in ("pending", "running", "paused"):
            continue
        deps = [by_id[d] for d in task.depends_on if d in by_id]
        stopped = [d for d in deps if d.status in ("failed", "cancelled")]
        if stopped:
            task.status = "cancelled"
            task.detail = f"not run: {stopped[0].id} {stopped[0].status}"
            continue
        if all(d.status in DONE for d in deps):
            return task
    return None


def outcome_of(plan: Plan) -> Outcome:
    """succeeded: every task done, nothing failed. blocked: the change was stopped (by the gate or after a
    failure) and every task the re-plans added is done. paused: a task holds and waits for a person.
    failed: anything else."""
    if any(t.status == "paused" for t in plan.tasks):
        return "paused"
    if any(t.status in ("pending", "running") for t in plan.tasks):
        return "failed"
    added = {task_id for replan in plan.replans for task_id in replan.added}
    if any(t.status == "failed" for t in plan.tasks if t.id in added):
        return "failed"
    if any(t.kind == "block" and t.status == "succeeded" for t in plan.tasks):
        return "blocked"
    return "failed" if any(t.status == "failed" for t in plan.tasks) else "succeeded"


def write_incident(plan: Plan, task: Task, data_root: Path, now: datetime) -> tuple[str, bool]:
    """Record the incident of `task` in `<data root>/feedback/incidents.csv` (the ingestion schema, which
    the next `awo retrain` ingests). The id derives from the plan and the task, so a re-run records it
    once. Returns the incident id and whether the file changed."""
    incident_id = f"awo-{plan.plan_id}-{task.id.replace(':', '-').replace('#', '-')}"
    failed = plan.task(str(task.params["failed_task"])) if "failed_task" in task.params else None
    started = failed.finished_at if failed is not None and failed.finished_at is not None else now
    recorded = record_incident(
        data_root,
        {
            "incident_id": incident_id,
            "service": task.service or ",".join(plan.deploy_order),
            "severity": task.params.get("severity", "high"),
            "started_at": started,
            "resolved_at": None,
            "deploy_id": task.params.get("deploy_id"),
            "sha": plan.goal.ref if plan.goal.ref_kind == "sha" else None,
            "summary": str(task.params.get("summary", "")),
        },
    )
    return incident_id, recorded.written


def decision_id_of(plan: Plan) -> str:
    """The decision the plan carries out; a plan made without one is audited under `plan-<plan id>`, so
    all records of one run (pauses, analyses, the finished run) share an id."""
    return plan.decision_id if plan.decision_id is not None else f"plan-{plan.plan_id}"


def _audit_record(
    plan: Plan, outcome: Outcome, executor: Executor, incidents: list[str], now: datetime
) -> dict[str, Any]:
    return {
        "kind": "plan_run",
        "decision_id": decision_id_of(plan),
        "plan_id": plan.plan_id,
        "goal": plan.goal.describe(),
        "policy_version": plan.policy_version,
        "executor": getattr(executor, "name", type(executor).__name__),
        "outcome": outcome,
        "tasks": {t.id: t.status for t in plan.tasks},
        "replans": [r.model_dump() for r in plan.replans],
        "incidents": incidents,
        "finished_at": now.isoformat(),
    }


def _pause_record(plan: Plan, task: Task, executor: Executor, now: datetime) -> dict[str, Any]:
    return {
        "kind": "plan_paused",
        "decision_id": decision_id_of(plan),
        "plan_id": plan.plan_id,
        "task": task.id,
        "why": task.detail,
        "executor": getattr(executor, "name", type(executor).__name__),
        "paused_at": now.isoformat(),
    }


def run_plan(
    plan: Plan,
    executor: Executor,
    *,
    on_event: Callable[[RunEvent], None] | None = None,
    audit: AuditSink | None = None,
    state_path: Path | None = None,
    feedback_root: Path | None = None,
    clock: Callable[[], datetime] | None = None,
    max_replans: int = 10,
    approved_by: str | None = None,
) -> RunReport:
    """Run `plan`'s due tasks one at a time, in dependency order. With `state_path` (the plan file itself
    is a good one) every status change is saved there at once, and a state file of the same plan found
    there is resumed: finished tasks are not run again, a task cut off while running is run again (executors
    reconcile, so that is harmless). A failed task re-plans (`replan_on_failure`) and the run goes on with
    the new tasks. `record_incident` tasks also record their incident under `feedback_root` (the data
    root; agents.feedback). A finished run is written once to `audit` (kind `plan_run`). A plan whose gate is
    `senior_review` runs only with `approved_by` (the caller checks that person against the policy's
    `overrides.allowed`); it is recorded in the audit."""
    now = clock or (lambda: datetime.now(UTC))
    emit = on_event or (lambda event: None)
    plan = plan.model_copy(deep=True)
    if state_path is not None and Path(state_path).is_file():
        saved = load_plan(state_path)
        if saved.plan_id != plan.plan_id:
            raise PlanError(
                f"state file {state_path} belongs to plan {saved.plan_id}, not {plan.plan_id}: "
                "move it away to start over"
            )
        plan = saved
    if needs_approval(plan) and not approved_by:
        raise PlanError(
            f"plan {plan.plan_id} has the gate senior_review: a person approves it (--approve) before it "
            "deploys or repairs"
        )
    resumed_after = sum(1 for t in plan.tasks if t.status not in ("pending", "running", "paused"))
    if resumed_after and not plan.finished():
        emit(
            RunEvent(
                "resumed",
                f"resuming plan {plan.plan_id}: {resumed_after} of {len(plan.tasks)} tasks finished",
            )
        )

    def save() -> None:
        if state_path is not None:
            save_plan(plan, state_path)

    ran: list[str] = []
    incidents: list[str] = []
    while (task := _next_task(plan)) is not None:
        # a resumed task keeps when it first started (a deployment's start time feeds point-in-time features)
        task.status, task.started_at = "running", task.started_at or now()
        save()
        emit(RunEvent("started", task.describe(), task.id, "running"))
        try:
            result = executor.run(task.model_copy(deep=True))
        except Exception as exc:  # a broken executor fails the task; the re-plan makes the world safe
            result = TaskResult(
                task_id=task.id, status="failed", detail=f"executor error: {type(exc).__name__}: {exc}"
            )
        if result.task_id != task.id:
            result = TaskResult(
                task_id=task.id, status="failed", detail=f"executor answered for {result.task_id!r}"
            )
        if result.status == "succeeded" and task.kind == "record_incident" and feedback_root is not None:
            try:
                incident_id, written = write_incident(plan, task, Path(feedback_root), now())
            except (OSError, ValueError, AwoError) as exc:
                result = TaskResult(task_id=task.id, status="failed", detail=f"incident not written: {exc}")
            else:
                incidents.append(incident_id)
                if written:
                    result.actions.append(f"record incident {incident_id} in feedback/incidents.csv")
        task.status, task.detail, task.finished_at = result.status, result.detail, now()
        task.actions = [*task.actions, *result.actions]
        ran.append(task.id)
        save()
        said = f"{task.id} {result.status}" + (f": {result.detail}" if result.detail else "")
        emit(RunEvent("finished", said, task.id, result.status))
        if result.status == "paused":  # hold: nothing else runs until a person resumes or aborts
            if audit is not None:
                audit.append(_pause_record(plan, task, executor, now()))
            emit(RunEvent("paused", f"plan {plan.plan_id} paused at {task.id}: {result.detail}", task.id))
            break
        if result.status == "failed" and len(plan.replans) < max_replans:
            plan = replan_on_failure(plan, task.id, result.detail or "failed")
            last = plan.replans[-1]
            save()
            emit(
                RunEvent(
                    "replanned",
                    f"re-planned after {task.id}: added {', '.join(last.added) or 'nothing'}; "
                    f"cancelled {', '.join(last.cancelled) or 'nothing'}",
                    task.id,
                )
            )
    paused = any(t.status == "paused" for t in plan.tasks)
    for task in plan.tasks:  # what can no longer run (a failure past the re-plan limit); a pause keeps all
        if task.status == "pending" and not paused:
            task.status, task.detail = "cancelled", "not run: the plan stopped"
    outcome = outcome_of(plan)
    # a paused run is audited as plan_paused; its plan_run record waits for the outcome after resume/abort
    if audit is not None and plan.recorded_at is None and ran and not paused:
        finished = now()
        audit.append(
            _audit_record(plan, outcome, executor, incidents, finished) | {"approved_by": approved_by}
        )
        plan.recorded_at = finished
    save()
    return RunReport(
        plan=plan,
        outcome=outcome,
        ran=ran,
        resumed_after=resumed_after,
        incidents=incidents,
        incidents_path=None
        if feedback_root is None
        else str(feedback_file(Path(feedback_root), "incidents")),
    )
