"""Rollouts carried out end to end (`awo rollout start|status|pause|resume|abort`): a plan (or a decision,
planned here) runs on the configured executor with the canary analyst, its state kept under
`<data root>/rollouts/`, its analyses audited with their evidence, and its outcome fed back as a
deployment row so the next `awo retrain` learns from it. A rollout never deploys to an environment whose
configuration overlays fail `awo config check`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.executor import Executor
from agents.planner import DEPLOY_KINDS, Plan, PlanError, load_plan, plan_goal, ship_goal
from agents.run import AuditSink, RunEvent, RunReport, decision_id_of, run_plan
from features.errors import AwoError

if TYPE_CHECKING:
    from agents.feedback import Recorded
    from agents.kube import CanaryAnalyst
    from agents.policy import Policy
    from features.settings import Settings

ROLLOUTS_DIR = "rollouts"
# the deployment ingestion schema's strategies (features/delivery.py); a plan without one rolls
STRATEGIES = frozenset({"full", "rolling", "canary", "blue-green", "recreate"})


class RolloutError(AwoError):
    """A rollout that cannot be started, found or acted on; the message names it."""


def rollout_file(data_dir: Path, rollout_id: str) -> Path:
    """The plan file that is the rollout's run state: `<data root>/rollouts/<id>.yaml`."""
    if not rollout_id or any(c in rollout_id for c in "/\\") or rollout_id.startswith("."):
        raise RolloutError(f"rollout id {rollout_id!r}: expected the id `awo rollout start` printed")
    return Path(data_dir) / ROLLOUTS_DIR / f"{rollout_id}.yaml"


def plan_from_file(path: Path, policy: Policy) -> Plan:
    """A plan written by `awo plan`, or a decision written by `awo decide --json` (planned here as
    "ship its newest commit of its services to its environment")."""
    from agents.decision import Decision

    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else None
    if text is None:
        raise RolloutError(f"rollout file {path} does not exist")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RolloutError(f"rollout file {path}: not valid JSON: {exc}") from None
        if "plan_id" not in doc:
            from pydantic import ValidationError

            try:
                decision = Decision.model_validate(doc)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(top level)"
                raise RolloutError(f"rollout file {path}: decision field {where}: {first['msg']}") from None
            if not decision.shas:
                raise RolloutError(f"rollout file {path}: the decision names no commit")
            return plan_goal(ship_goal(decision), decision, policy)
    return load_plan(path)


def analyst_from_settings(settings: Settings) -> CanaryAnalyst | None:
    """The canary analyst over Prometheus (`prometheus_url`) with the analysis template; None without a
    Prometheus: pause steps then only wait their time."""
    if settings.prometheus_url is None:
        return None
    from agents.judge import load_template
    from agents.monitor import CanaryAnalyst, PrometheusSource

    # the executor labels only its canary copy `track: canary`; the stable pods carry no track label
    source = PrometheusSource(settings.prometheus_url, track_labels={"stable": ""})
    return CanaryAnalyst(
        load_template(settings.analysis_template),
        source,
        namespaces=settings.kube_namespaces,
        default_namespace=settings.kube_namespace,
    )


@dataclass(frozen=True)
class Target:
    """One service in one environment that the plan deploys to, with how its deployment ended."""

    service: str
    environment: str
    outcome: str  # the ingestion schema's: succeeded | failed | rolled-back | aborted | paused
    strategy: str  # the ingestion schema's: full | rolling | canary | blue-green | recreate
    started_at: datetime | None
    finished_at: datetime | None


def deployment_outcomes(plan: Plan, aborted: frozenset[tuple[str, str]] = frozenset()) -> list[Target]:
    """How each (service, environment) the plan put new code into ended, from its tasks' statuses: promoted
    (or deployed, without a canary) → succeeded; a task paused → paused; rolled back after a failure →
    rolled-back (aborted for the (service, environment) pairs in `aborted`: a person asked); failed
    otherwise. Targets nothing was deployed to are left
    out (a blocked change never reached them)."""
    targets: dict[tuple[str, str], list[Any]] = {}
    for task in plan.tasks:
        if task.service and task.environment and task.kind in DEPLOY_KINDS | {"rollback"}:
            targets.setdefault((task.service, task.environment), []).append(task)
    out = []
    for (service, environment), tasks in targets.items():
        deploys = [t for t in tasks if t.kind in DEPLOY_KINDS and t.started_at is not None]
        if not deploys:
            continue
        rolled_back = any(t.kind == "rollback" and t.status == "succeeded" for t in tasks)
        last = max(deploys, key=lambda t: t.started_at)
        if any(t.status == "paused" for t in deploys):
            outcome = "paused"
        elif rolled_back:
            outcome = "aborted" if (service, environment) in aborted else "rolled-back"
        elif all(t.status == "succeeded" for t in deploys) and last.kind in ("promote", "deploy"):
            outcome = "succeeded"
        elif any(t.status == "failed" for t in deploys):
            outcome = "failed"
        else:
            continue  # still under way (a canary that passed, its promote not yet run)
        finished = [t.finished_at for t in tasks if t.finished_at is not None]
        said = str(deploys[0].params.get("strategy") or plan.strategy or "rolling")
        out.append(
            Target(
                service,
                environment,
                outcome,
                said if said in STRATEGIES else "rolling",
                min(t.started_at for t in deploys),
                None if outcome == "paused" or not finished else max(finished),
            )
        )
    return out


def record_outcomes(
    plan: Plan, data_dir: Path, aborted: frozenset[tuple[str, str]] = frozenset()
) -> list[Recorded]:
    """Each target's outcome as a deployment row in `<data root>/feedback/deployments.csv` (deploy id
    `awo-<rollout id>-<service>-<environment>`: a resumed rollout replaces its paused row). A rollout of a
    release tag records nothing: the deployment schema links a deployment to its commit sha."""
    from agents.feedback import record_deployment

    if plan.goal.ref_kind != "sha":  # the deployment schema links a deployment to its commit
        return []
    recorded = []
    for target in deployment_outcomes(plan, aborted):
        recorded.append(
            record_deployment(
                data_dir,
                {
                    "deploy_id": f"awo-{plan.plan_id}-{target.service}-{target.environment}",
                    "service": target.service,
                    "environment": target.environment,
                    "sha": plan.goal.ref,
                    "started_at": target.started_at,
                    "finished_at": target.finished_at,
                    "strategy": target.strategy,
                    "outcome": target.outcome,
                },
            )
        )
    return recorded


def audit_analyses(plan: Plan, executor: Executor, audit: AuditSink) -> int:
    """One `canary_analysis` audit record per analysed task, with every verdict's per-metric statistics
    (the evidence of an automatic rollback or pause), and one `watch_anomaly` record per bake-time watch
    that found an anomaly. Returns the records written."""
    from agents.kube import verdict_data

    verdicts: dict[str, list[Any]] = getattr(executor, "verdicts", {})
    written = 0
    for task_id, said in verdicts.items():
        if not said:
            continue
        audit.append(
            {
                "kind": "canary_analysis",
                "decision_id": decision_id_of(plan),
                "plan_id": plan.plan_id,
                "task": task_id,
                "action": getattr(said[-1], "action", None),
                "verdicts": [verdict_data(v) for v in said],
            }
        )
        written += 1
    verdicts.clear()
    anomalies: dict[str, list[dict[str, Any]]] = getattr(executor, "anomalies", {})
    for task_id, found in anomalies.items():
        audit.append(
            {
                "kind": "watch_anomaly",
                "decision_id": decision_id_of(plan),
                "plan_id": plan.plan_id,
                "task": task_id,
                "anomalies": found,
            }
        )
        written += 1
    anomalies.clear()
    return written


def deploy_environments(plan: Plan) -> list[str]:
    """The environments the plan still has deploys (deploy, canary, promote) to run in."""
    return sorted(
        {
            t.environment
            for t in plan.tasks
            if t.kind in DEPLOY_KINDS and t.status == "pending" and t.environment
        }
    )


def config_refusal(plan: Plan, config_root: Path, policy: Policy) -> str | None:
    """Why the plan may not deploy: the findings of the configuration check (`awo config check`) about the
    environments it deploys to, or None. Environments without an overlay folder under the config root, and
    a config root that does not exist, have nothing to check."""
    from agents.config_check import check_config, environments_under, promotion_refusal

    targets = deploy_environments(plan)
    if not targets or not Path(config_root).is_dir():
        return None
    present = environments_under(Path(config_root))
    checked = [e for e in targets if e in present]
    if not checked:
        return None
    return promotion_refusal(check_config(Path(config_root), policy.config, present), checked)


@dataclass(frozen=True)
class RolloutRun:
    report: RunReport
    recorded: list[Recorded]
    analyses_audited: int


def carry_out(
    plan: Plan,
    settings: Settings,
    *,
    executor: Executor | None = None,
    analyst: CanaryAnalyst | None = None,
    approved_by: str | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
    policy: Policy | None = None,
) -> RolloutRun:
    """Run (or resume) the rollout of `plan` with its state in `<data root>/rollouts/<plan id>.yaml`, the
    executor the settings name (unless given; with Prometheus configured, bake times are watched as the
    policy's `monitoring` says), the audit log and the feedback files. Refused before anything runs when an
    environment it deploys to fails the configuration check."""
    from agents.engine import audit_log, policy_of
    from agents.kube import executor_from_settings
    from agents.watch import watcher_from_settings

    if not plan.plan_id:
        raise PlanError("the plan has no id: write it with `awo plan`")
    rules = policy or policy_of(settings)
    refusal = config_refusal(plan, settings.config_root, rules)
    if refusal is not None:
        raise RolloutError(f"rollout {plan.plan_id} refused: {refusal}")
    state = rollout_file(settings.data_dir, plan.plan_id)
    if executor is None:
        if analyst is None:
            analyst = analyst_from_settings(settings)
        executor = watcher_from_settings(
            settings, rules, executor_from_settings(settings, plan.plan_id, analyst)
        )
    log = audit_log(settings)
    with _one_runner(state):
        report = run_plan(
            plan,
            executor,
            on_event=on_event,
            audit=log,
            state_path=state,
            feedback_root=settings.data_dir,
            approved_by=approved_by,
        )
        audited = audit_analyses(report.plan, executor, log)
    aborted = aborted_targets(executor, plan.plan_id)
    return RolloutRun(report, record_outcomes(report.plan, settings.data_dir, aborted), audited)


@contextmanager
def _one_runner(state: Path) -> Iterator[None]:
    """One process carries a rollout out at a time: two would interleave their steps on the same objects."""
    import fcntl

    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state.with_suffix(".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RolloutError(
                f"rollout {state.stem} is being carried out by another process: "
                "`awo rollout pause|abort` reach it, `awo rollout status` shows it"
            ) from None
        yield


def aborted_targets(executor: Executor, rollout_id: str) -> frozenset[tuple[str, str]]:
    """The (service, environment) pairs a person aborted, as the executor's rollout state says."""
    from agents.rollout_state import RolloutNotFound, RolloutStore

    store = getattr(executor, "state", None)
    if not isinstance(store, RolloutStore):
        return frozenset()
    try:
        targets = store.status(rollout_id).targets
    except RolloutNotFound:
        return frozenset()
    return frozenset((t.service, t.environment) for t in targets if t.phase in ("aborted", "aborting"))


def saved_plan(settings: Settings, rollout_id: str) -> Plan:
    path = rollout_file(settings.data_dir, rollout_id)
    if not path.is_file():
        raise RolloutError(f"rollout {rollout_id!r}: no such rollout under {path.parent}")
    return load_plan(path)
