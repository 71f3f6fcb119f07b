"""`awo rollout start|status|pause|resume|abort`: carry out a planned rollout on the configured executor
(dry run or a Kubernetes cluster), watch it and act on it. Exit codes as `awo run`: 0 succeeded, 1 failed,
3 paused (waits for `resume` or `abort`), 4 blocked (rolled back and the change blocked)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.agents import PolicyOption
from pipelines.cli.root import app, console, load_settings

if TYPE_CHECKING:
    from agents.rollouts import RolloutRun
    from features.settings import Settings

rollout_app = typer.Typer(help="Carry out rollouts and act on them while they run.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
ApproveOption = Annotated[
    bool, typer.Option("--approve", help="approve a senior_review rollout as yourself (if allowed)")
]


def _print_run(run: RolloutRun) -> None:
    for line in run.report.summary_lines():
        console.print(line, highlight=False)
    for recorded in run.recorded:
        row = recorded.row
        console.print(
            f"  outcome {row['outcome']} of {row['service']} in {row['environment']} recorded as "
            f"{row['deploy_id']} ({'changed' if recorded.written else 'unchanged'}; `awo retrain` learns it)",
            highlight=False,
        )
    if not run.recorded and run.report.plan.goal.ref_kind == "release":
        console.print(
            f"  outcome not fed back: release {run.report.plan.goal.ref} names no commit "
            "(plan the rollout of a sha to teach `awo retrain`)",
            highlight=False,
        )
    if run.analyses_audited:
        console.print(
            f"  {run.analyses_audited} analyses and anomalies audited with their evidence", highlight=False
        )


def _approver(approve: bool, settings: Settings, policy: Path | None) -> str | None:
    if not approve:
        return None
    from agents.engine import check_may_override, policy_of

    approved_by = getpass.getuser()  # who runs the command: not a name typed on it
    check_may_override(policy_of(settings, policy), approved_by)
    return approved_by


def _run(rollout_id: str, settings: Settings, approved_by: str | None) -> None:
    from agents.rollouts import carry_out, saved_plan

    run = carry_out(
        saved_plan(settings, rollout_id),
        settings,
        approved_by=approved_by,
        on_event=lambda event: console.print(event.message, highlight=False),
    )
    _print_run(run)
    raise typer.Exit(run.report.exit_code)


@rollout_app.command("start")
def start(
    rollout_file: Annotated[
        Path,
        typer.Argument(help="a plan (`awo plan --out`) or a decision (`awo decide --json`)", dir_okay=False),
    ],
    approve: ApproveOption = False,
    policy: PolicyOption = None,
) -> None:
    """Start (or resume) the rollout: each task on the configured executor (AWO_EXECUTOR), canary steps
    judged by the analysis over Prometheus (AWO_PROMETHEUS_URL), the outcome fed back for retraining."""
    from agents.engine import OverrideRefused, audit_log, plan_gate_problem, policy_of
    from agents.rollouts import carry_out, plan_from_file
    from agents.rollouts import rollout_file as state_file

    settings = load_settings()
    rules = policy_of(settings, policy)
    plan = plan_from_file(rollout_file, rules)
    if problem := plan_gate_problem(plan.gate, plan.decision_id, audit_log(settings)):
        raise OverrideRefused(problem)
    console.print(
        f"rollout {plan.plan_id}: {plan.goal.describe()}: {len(plan.tasks)} tasks, gate {plan.gate}, "
        f"strategy {plan.strategy or '-'}, executor {settings.executor} "
        f"→ {state_file(settings.data_dir, plan.plan_id)}",
        highlight=False,
    )
    run = carry_out(
        plan,
        settings,
        approved_by=_approver(approve, settings, policy),
        on_event=lambda event: console.print(event.message, highlight=False),
    )
    _print_run(run)
    raise typer.Exit(run.report.exit_code)


@rollout_app.command("status")
def status(
    rollout_id: Annotated[str, typer.Argument(help="the id `awo rollout start` printed")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    events: Annotated[int, typer.Option(min=0, help="how many of the latest cluster events to show")] = 10,
) -> None:
    """The rollout's tasks and, on a cluster, each target's phase, step, pending request and events."""
    from agents.rollout_state import RolloutNotFound, RolloutStore
    from agents.rollouts import saved_plan

    settings = load_settings()
    plan = saved_plan(settings, rollout_id)
    store = RolloutStore.in_data_root(settings.data_dir)
    try:
        cluster = store.status(rollout_id) if store.path.is_file() else None
    except RolloutNotFound:
        cluster = None
    if as_json:
        doc = {
            "rollout_id": rollout_id,
            "goal": plan.goal.describe(),
            "tasks": [{"id": t.id, "status": t.status, "detail": t.detail} for t in plan.tasks],
            "requested": cluster.requested if cluster else None,
            "targets": [
                {
                    "service": t.service,
                    "environment": t.environment,
                    "phase": t.phase,
                    "step": t.step,
                    "strategy": t.strategy,
                    "mode": t.mode,
                    "canary_image": t.canary_image,
                    "previous_image": t.previous_image,
                }
                for t in (cluster.targets if cluster else [])
            ],
        }
        console.print_json(json.dumps(doc))
        return
    counts: dict[str, int] = {}
    for task in plan.tasks:
        counts[task.status] = counts.get(task.status, 0) + 1
    console.print(
        f"rollout {rollout_id}: {plan.goal.describe()}: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        highlight=False,
    )
    for task in plan.tasks:
        console.print(f"  {task.id:<24} {task.status:<10} {task.detail}", highlight=False, soft_wrap=True)
    if cluster is None:
        console.print("  no cluster state (the dry-run executor ran it)", highlight=False)
        return
    if cluster.requested:
        console.print(f"  requested: {cluster.requested} (acted on at the next step)", highlight=False)
    for target in cluster.targets:
        console.print(
            f"  {target.service} in {target.environment}: {target.phase}, step {target.step}, "
            f"{target.strategy} ({target.mode}), "
            f"{target.previous_image or '-'} → {target.canary_image or '-'}",
            highlight=False,
        )
    for event in cluster.events[-events:] if events else []:
        console.print(f"    {event.at} {event.task_id} {event.kind}: {event.detail}", highlight=False)


def _request(rollout_id: str, action: str) -> Settings:
    from agents.rollout_state import RolloutStore
    from agents.rollouts import RolloutError, saved_plan

    settings = load_settings()
    saved_plan(settings, rollout_id)  # names an unknown id
    store = RolloutStore.in_data_root(settings.data_dir)
    if not store.path.is_file():
        raise RolloutError(f"rollout {rollout_id!r} ran on the dry-run executor: nothing holds on a cluster")
    store.request(rollout_id, action)
    return settings


def _paused(settings: Settings, rollout_id: str) -> bool:
    from agents.rollouts import saved_plan

    return any(t.status == "paused" for t in saved_plan(settings, rollout_id).tasks)


@rollout_app.command("pause")
def pause(rollout_id: Annotated[str, typer.Argument(help="the rollout's id")]) -> None:
    """Ask the running rollout to hold at its next step (no more traffic shifted)."""
    _request(rollout_id, "pause")
    console.print(f"rollout {rollout_id}: pause requested; it holds at its next step", highlight=False)


def _act(rollout_id: str, action: str, approve: bool, policy: Path | None, requested: str) -> None:
    """Leave `action` for the running executor; a paused rollout is carried on here instead."""
    settings = _request(rollout_id, action)
    if not _paused(settings, rollout_id):
        console.print(f"rollout {rollout_id}: {action} requested; {requested}", highlight=False)
        return
    _run(rollout_id, settings, _approver(approve, settings, policy))


@rollout_app.command("resume")
def resume(
    rollout_id: Annotated[str, typer.Argument(help="the rollout's id")],
    approve: ApproveOption = False,
    policy: PolicyOption = None,
) -> None:
    """Go on with a paused rollout (past an inconclusive analysis), here, until it finishes or holds again."""
    _act(rollout_id, "resume", approve, policy, "the running rollout goes on")


@rollout_app.command("abort")
def abort(
    rollout_id: Annotated[str, typer.Argument(help="the rollout's id")],
    approve: ApproveOption = False,
    policy: PolicyOption = None,
) -> None:
    """Stop the rollout and roll it back (recorded as aborted). A paused rollout is rolled back here; a
    running one rolls back at its next step."""
    _act(rollout_id, "abort", approve, policy, "it rolls back at its next step")
