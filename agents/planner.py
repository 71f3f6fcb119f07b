"""Goals into task graphs: a closed task vocabulary, the deterministic planner (`plan_goal`), the checks any
plan must pass (`check_plan`) and the completion of a proposed plan (an LLM's, say) into a legal one, the
re-plan after a failed step, and the plan file (YAML). Pure functions, except `save_plan`/`load_plan`."""

from __future__ import annotations

import graphlib
import hashlib
import heapq
import itertools
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.decision import Decision
from agents.goals import Goal, parse_goal
from agents.policy import Policy, duration_seconds
from agents.vocabulary import BANDS, Band, Gate, Strategy, gate_level
from features.errors import AwoError

TaskKind = Literal[
    "analyse",
    "test",
    "deploy",
    "canary",
    "promote",
    "watch",
    "rollback",
    "block",
    "record_incident",
    "notify",
    "restart",  # params: ref (optional: the version that runs)
    "scale_out",  # params: replicas (int >= 1, the new total)
    "flag_off",  # params: flag (str)
]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
REPAIR_KINDS = frozenset({"rollback", "restart", "scale_out", "flag_off"})  # what a diagnosis may run
TaskStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled", "paused"]
DEPLOY_KINDS = frozenset({"deploy", "canary", "promote"})  # kinds that put new code in front of users
PLACED_KINDS = DEPLOY_KINDS | REPAIR_KINDS | {"watch"}  # kinds that act on one service in one environment
DONE = frozenset({"succeeded", "skipped"})
FINISHED = frozenset({"succeeded", "skipped", "failed", "cancelled"})
CANARY_STRATEGIES = frozenset(
    {"canary", "blue-green"}
)  # strategies that expose the new version to a slice first
STAGING = "staging"
# Environments that are not production. Any other name counts as production: the safety rules fail closed.
PRE_PRODUCTION = frozenset(
    {"dev", "development", "test", "testing", "qa", "ci", "staging", "preview", "sandbox"}
)
PLAN_FORMAT: Literal[1] = 1
_ID = r"^[a-z_]+(:[a-z0-9][a-z0-9-]*)?(@[a-z0-9][a-z0-9-]*)?(#[0-9]+)?$"
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


class PlanError(AwoError):
    """A plan that cannot be made, read or completed: the message names the task, field or file."""


def is_production(environment: str | None) -> bool:
    return environment is not None and environment not in PRE_PRODUCTION


def needs_approval(plan: Plan) -> bool:
    """A `senior_review` gate with deploys still to run: a person approves before they run (a rollback,
    a block and the steps after a failure never wait for one), or a repair the policy's `repair.approval_from`
    puts under a person's approval (`plan_repair` marks it with the param `needs_approval`)."""
    return plan.gate == "senior_review" and any(
        (t.kind in DEPLOY_KINDS or (t.kind in REPAIR_KINDS and t.params.get("needs_approval") is True))
        and t.status in ("pending", "running")
        for t in plan.tasks
    )


class Task(BaseModel):
    """One step of a plan. `params` are data for the executor (suites, steps, analysis ...), never code."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_ID, max_length=200, examples=["canary:payments"])
    kind: TaskKind
    service: str | None = Field(default=None, pattern=_NAME)
    environment: str | None = Field(default=None, pattern=_NAME)
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    why: str = Field(default="", description="why the task is in the plan")
    status: TaskStatus = "pending"
    detail: str = Field(default="", description="what the executor said")
    actions: list[str] = Field(default_factory=list, description="what the executor did")
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def describe(self) -> str:
        where = " ".join(
            part
            for part in (
                self.service or "",
                f"in {self.environment}" if self.environment and self.kind != "deploy" else "",
                f"to {self.environment}" if self.environment and self.kind == "deploy" else "",
            )
            if part
        )
        return f"{self.kind} {where}".strip()


class Replan(BaseModel):
    """What a failure changed: the tasks added and the ones that will no longer run."""

    failed_task: str
    why: str
    added: list[str]
    cancelled: list[str]


class Plan(BaseModel):
    """A task graph for one goal, with each task's status (the plan file is also the run's state)."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = PLAN_FORMAT
    plan_id: str = Field(description="digest of the goal, the time and the planned tasks")
    goal: Goal
    created_at: datetime
    policy_version: str
    decision_id: str | None = None
    gate: Gate
    band: Band | None = None
    strategy: Strategy | None = Field(default=None, description="the rollout strategy the plan uses")
    canary_required: bool = Field(
        description="the policy's rollout template has a canary or blue-green stage"
    )
    deploy_order: list[str] = Field(description="the goal's services, dependencies first")
    rollback_order: list[str] = Field(description="the reverse: dependants first")
    deadline: datetime | None = None
    estimated_s: float = Field(default=0.0, description="expected duration: tests, canary pauses, bake time")
    notes: list[str] = Field(default_factory=list)
    tasks: list[Task]
    replans: list[Replan] = Field(default_factory=list)
    recorded_at: datetime | None = Field(default=None, description="when the finished run was audited")

    @model_validator(mode="after")
    def _unique_ids(self) -> Plan:
        seen: set[str] = set()
        for task in self.tasks:
            if task.id in seen:
                raise ValueError(f"task id {task.id!r} appears twice")
            seen.add(task.id)
        return self

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise PlanError(f"plan {self.plan_id}: no task {task_id!r}")

    def finished(self) -> bool:
        return all(t.status in FINISHED for t in self.tasks)


# --- the deterministic planner ----------------------------------------------------------------------


def _unscored_band(policy: Policy) -> Band:
    """Without a decision the change counts as unscored: the riskiest band the `on_error` gate allows
    (as `decide` does for a change it cannot score)."""
    fitting = [b for b in BANDS if gate_level(getattr(policy.gates, b)) <= gate_level(policy.on_error)]
    return fitting[-1] if fitting else "critical"


class _Rollout(BaseModel):
    band: Band
    template_strategy: Strategy
    strategy: Strategy
    steps: list[dict[str, Any]]
    analysis: list[dict[str, Any]]
    bake_time_s: int
    notes: list[str]


def _rollout(goal: Goal, decision: Decision | None, policy: Policy) -> _Rollout:
    """The decision's rollout (or, without one, the unscored band's template), and what the goal's
    options may change of it: a goal can ask for a canary, never skip one the policy requires."""
    if decision is not None:
        rp = decision.rollout_plan
        band, strategy = rp.template_band, rp.strategy
        steps = [s.model_dump(exclude_none=True) for s in rp.steps]
        analysis = [a.model_dump() for a in rp.analysis]
        bake = rp.bake_time_s
    else:
        band = _unscored_band(policy)
        template = policy.rollout[band]
        strategy = template.strategy
        steps = [s.model_dump(exclude_none=True) for s in template.steps]
        analysis = [a.model_dump() for a in template.analysis]
        bake = duration_seconds(template.bake_time)
    notes: list[str] = []
    chosen = strategy
    required = strategy in CANARY_STRATEGIES
    if not goal.canary and required:
        notes.append(f"'without canary' refused: the policy's {band} rollout template uses {strategy}")
    asked = goal.strategy
    if asked is not None and asked != strategy:
        if required and asked not in CANARY_STRATEGIES:
            notes.append(f"'strategy {asked}' refused: the policy's {band} rollout template uses {strategy}")
        else:
            chosen = asked
            notes.append(f"strategy {asked} as the goal asks (the policy's {band} template: {strategy})")
    if chosen == "canary" and not steps:
        # a canary needs weights: borrow them from the first canary template at this band or riskier
        riskier = [b for b in BANDS[BANDS.index(band) :] if policy.rollout[b].strategy == "canary"]
        donors = riskier or [b for b in BANDS if policy.rollout[b].strategy == "canary"]
        if donors:
            steps = [s.model_dump(exclude_none=True) for s in policy.rollout[donors[0]].steps]
            notes.append(f"canary steps from the policy's {donors[0]} template")
        else:
            steps = [{"set_weight": 10}, {"pause": "10m"}, {"set_weight": 100}]
            notes.append("canary steps 10% for 10m, then 100% (the policy has no canary template)")
    return _Rollout(
        band=band,
        template_strategy=strategy,
        strategy=chosen,
        steps=steps,
        analysis=analysis,
        bake_time_s=bake,
        notes=notes,
    )


def _order(goal: Goal, decision: Decision | None) -> list[str]:
    """The goal's services in the decision's deploy order; services the decision does not know follow in
    the order the goal names them."""
    known = decision.rollout_plan.deploy_order if decision is not None else []
    ordered = [s for s in known if s in goal.services]
    return ordered + [s for s in goal.services if s not in ordered]


def _suites(decision: Decision | None, policy: Policy, band: Band) -> list[dict[str, Any]]:
    if decision is not None:
        return [
            {"name": s.name, "resource": s.resource, "mandatory": s.mandatory}
            for s in decision.test_plan.suites
        ]
    names = [n for n, s in policy.suites.items() if "code" in s.runs_for]
    names += [n for n in policy.tests.suites_by_band.get(band, []) if n not in names]
    return [{"name": n, "resource": policy.suites[n].resource, "mandatory": True} for n in names]


def _checks(decision: Decision | None) -> dict[str, Any]:
    """The decision's infrastructure checks (Terraform plan review, Ansible check mode) for the test task;
    nothing when there are none, so plans without them keep their shape and id."""
    if decision is None or not decision.test_plan.checks:
        return {}
    return {"checks": [c.model_dump(mode="json") for c in decision.test_plan.checks]}


def _pause_s(steps: list[dict[str, Any]]) -> int:
    return sum(duration_seconds(s["pause"]) for s in steps if "pause" in s)


def plan_id_of(plan: Plan) -> str:
    body = {
        "goal": plan.goal.describe(),
        "created_at": plan.created_at.isoformat(),
        "tasks": [
            t.model_dump(
                mode="json", include={"id", "kind", "service", "environment", "params", "depends_on"}
            )
            for t in plan.tasks
        ],
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _with_id(plan: Plan) -> Plan:
    return plan.model_copy(update={"plan_id": plan_id_of(plan)})


def ship_goal(decision: Decision, strategy: Strategy | None = None) -> Goal:
    """The goal of shipping a decision's newest commit to its services and environment (`awo rollout start`
    on a decision file, the demo's canary); `strategy` overrides the rollout plan's."""
    sha = decision.shas[-1]
    return Goal(
        action="ship",
        ref=sha,
        ref_kind="sha",
        services=decision.services,
        environment=decision.environment,
        strategy=strategy,
        text=f"ship {sha} of {', '.join(decision.services)} to {decision.environment}",
    )


def plan_goal(
    goal: Goal | str, decision: Decision | None, policy: Policy, *, now: datetime | None = None
) -> Plan:
    """The task graph of `goal`. Ship: analyse → test → deploy to staging → canary → promote → watch, one
    chain per service in deploy order, each service's production steps after the previous service's promote.
    A rolling or full rollout has no canary; a `block` gate plans no deploy at all. Deterministic: `now`
    defaults to the decision's time (the current time only when there is neither)."""
    goal = parse_goal(goal) if isinstance(goal, str) else goal
    if now is None:
        now = decision.decided_at if decision is not None else datetime.now(UTC)
    notes: list[str] = []
    if decision is not None:
        if goal.ref_kind == "sha" and goal.ref and not any(s.startswith(goal.ref) for s in decision.shas):
            raise PlanError(
                f"the decision is about {', '.join(s[:12] for s in decision.shas)}, not {goal.ref}: "
                "decide on the commit the goal ships"
            )
        unknown = [s for s in goal.services if s not in decision.services]
        if unknown and goal.action != "rollback":
            notes.append(
                f"the decision does not name service(s) {', '.join(unknown)}; its gate applies to them"
            )
        if decision.environment != goal.environment and goal.action != "rollback":
            notes.append(f"the decision was made for {decision.environment}, the goal is {goal.environment}")
    elif goal.action != "rollback":
        notes.append(
            f"no decision: the change counts as unscored; the policy's on_error gate {policy.on_error} holds"
        )
    gate: Gate = decision.gate if decision is not None else policy.on_error
    rollout = _rollout(goal, decision, policy)
    notes += rollout.notes
    order = _order(goal, decision)
    rollback_order = (
        [s for s in decision.rollout_plan.rollback_order if s in order] if decision is not None else []
    )
    rollback_order += [s for s in reversed(order) if s not in rollback_order]
    deadline = goal.deadline(now)

    if goal.action == "rollback":
        tasks = _rollback_tasks(goal, rollback_order, rollout)
        estimated = float(rollout.bake_time_s * len(order))
    else:
        tasks, estimated = _ship_tasks(goal, decision, policy, gate, order, rollout)
        deploy_at = decision.rollout_plan.deploy_at if decision is not None else None
        if decision is not None and deploy_at is None and gate != "block":
            notes.append("no deploy slot within the policy's lookahead: a person picks the time")
        start = deploy_at if deploy_at is not None and deploy_at > now else now
        if deadline is not None and gate != "block":
            if deploy_at is not None and deploy_at > deadline:
                notes.append(
                    f"the deadline {deadline.isoformat()} cannot be met: the policy's first slot is "
                    f"{deploy_at.isoformat()}"
                )
            elif start + timedelta(seconds=estimated) > deadline:
                notes.append(
                    f"the plan takes about {estimated / 3600:.1f} h: it may miss the deadline "
                    f"{deadline.isoformat()}"
                )
    plan = Plan(
        plan_id="",
        goal=goal,
        created_at=now,
        policy_version=policy.version,
        decision_id=decision.decision_id if decision is not None else None,
        gate=gate,
        band=decision.band if decision is not None else None,
        strategy=None if gate == "block" and goal.action != "rollback" else rollout.strategy,
        canary_required=rollout.template_strategy in CANARY_STRATEGIES,
        deploy_order=order,
        rollback_order=rollback_order,
        deadline=deadline,
        estimated_s=estimated,
        notes=notes,
        tasks=tasks,
    )
    return _with_id(plan)


def _ship_tasks(
    goal: Goal, decision: Decision | None, policy: Policy, gate: Gate, order: list[str], rollout: _Rollout
) -> tuple[list[Task], float]:
    """Ship and promote goals."""
    target = goal.environment
    ref = goal.ref
    analyse = Task(
        id="analyse",
        kind="analyse",
        environment=target,
        params={
            "ref": ref,
            "shas": decision.shas if decision is not None else [],
            "gate": gate,
            "band": decision.band if decision is not None else None,
            "probability": decision.probability if decision is not None else None,
            "decision_id": decision.decision_id if decision is not None else None,
            "policy_version": policy.version,
            "requires_review": gate == "senior_review",
        },
        why="the change's risk and gate come first",
    )
    if gate == "block":
        why = "the decision's gate is block: nothing deploys"
        return [
            analyse,
            Task(
                id="block", kind="block", params={"ref": ref, "reason": why}, depends_on=["analyse"], why=why
            ),
            Task(
                id="notify",
                kind="notify",
                params={"message": f"{goal.describe()}: blocked by the policy ({policy.version})"},
                depends_on=["block"],
                why="the owners hear that the change is blocked",
            ),
        ], 0.0
    suites = _suites(decision, policy, rollout.band)
    test_s = (
        decision.test_plan.planned_s
        if decision is not None
        else sum(policy.suites[s["name"]].cost_s for s in suites)
    )
    test = Task(
        id="test",
        kind="test",
        environment=goal.source_environment,
        params={
            "ref": ref,
            "suites": suites,
            "tests": len(decision.test_plan.tests) if decision is not None else 0,
            "budget_s": decision.test_plan.budget_s if decision is not None else None,
            "planned_s": test_s,
            **_checks(decision),
        },
        depends_on=["analyse"],
        why="the test plan runs before anything deploys",
    )
    tasks = [analyse, test]
    canary = rollout.strategy in CANARY_STRATEGIES and is_production(target)
    per_service_s = rollout.bake_time_s + (_pause_s(rollout.steps) if canary else 0)
    stage_first = goal.action == "ship" and target != STAGING
    deploy_at = decision.rollout_plan.deploy_at if decision is not None else None
    previous: str | None = None  # the previous service's last deploy-like task in the target environment
    previous_stage: str | None = None
    for i, service in enumerate(order):
        entry = [previous] if previous else []
        first_prod: dict[str, Any] = {}
        if i == 0 and deploy_at is not None and is_production(target):
            first_prod = {"not_before": deploy_at.isoformat()}
        if stage_first and is_production(target):
            stage = Task(
                id=f"deploy:{service}",
                kind="deploy",
                service=service,
                environment=STAGING,
                params={"ref": ref, "strategy": "rolling"},
                depends_on=["test", *([previous_stage] if previous_stage else [])],
                why=f"{service} runs in {STAGING} before {target}",
            )
            tasks.append(stage)
            previous_stage = stage.id
            entry = [stage.id, *entry]
        elif not is_production(target) and goal.action == "ship":
            stage = Task(
                id=f"deploy:{service}",
                kind="deploy",
                service=service,
                environment=target,
                params={"ref": ref, "strategy": rollout.strategy},
                depends_on=["test", *entry],
                why=f"ship {service} to {target}",
            )
            tasks.append(stage)
            tasks.append(_watch(service, target, stage.id, rollout))
            previous = stage.id
            continue
        else:
            entry = ["test", *entry]
        if canary:
            step = Task(
                id=f"canary:{service}",
                kind="canary",
                service=service,
                environment=target,
                params={
                    "ref": ref,
                    "strategy": rollout.strategy,
                    "steps": rollout.steps,
                    "analysis": rollout.analysis,
                    **first_prod,
                },
                depends_on=entry,
                why=f"the {rollout.strategy} exposes a slice of {target} first",
            )
            tasks.append(step)
            entry, first_prod = [step.id], {}
        promote = Task(
            id=f"promote:{service}",
            kind="promote",
            service=service,
            environment=target,
            params={"ref": ref, "strategy": rollout.strategy, "weight": 100, **first_prod},
            depends_on=entry,
            why=f"{service} takes all of {target}'s traffic",
        )
        tasks.append(promote)
        tasks.append(_watch(service, target, promote.id, rollout))
        previous = promote.id
    return tasks, test_s + per_service_s * len(order)


def _watch(service: str, environment: str, after: str, rollout: _Rollout) -> Task:
    return Task(
        id=f"watch:{service}",
        kind="watch",
        service=service,
        environment=environment,
        params={"duration_s": rollout.bake_time_s, "analysis": rollout.analysis},
        depends_on=[after],
        why=f"{service} bakes in {environment} under the policy's analysis",
    )


def _rollback_tasks(goal: Goal, rollback_order: list[str], rollout: _Rollout) -> list[Task]:
    tasks: list[Task] = []
    previous: str | None = None
    for service in rollback_order:
        back = Task(
            id=f"rollback:{service}",
            kind="rollback",
            service=service,
            environment=goal.environment,
            params={"to": goal.ref or "previous"},
            depends_on=[previous] if previous else [],
            why="dependants roll back before what they depend on",
        )
        tasks += [back, _watch(service, goal.environment, back.id, rollout)]
        previous = back.id
    return tasks


def plan_repair(
    incident_id: str,
    kind: str,
    service: str,
    environment: str,
    params: dict[str, Any],
    policy: Policy,
    *,
    needs_approval: bool,
    why: str,
    now: datetime,
) -> Plan:
    """The plan of a diagnosis's repair: the repair, a watch under the policy's low-band analysis, and a
    notification. Gate `senior_review` when the repair waits for a person's approval (run_plan then asks for
    one), `standard` otherwise. The goal reads as a rollback of the service: the goal grammar has no
    repair action, so the plan's notes say what the repair really is."""
    if kind not in REPAIR_KINDS:
        raise PlanError(
            f"repair of incident {incident_id}: {kind!r} is not a repair ({sorted(REPAIR_KINDS)})"
        )
    if kind == "scale_out" and not (isinstance(params.get("replicas"), int) and params["replicas"] >= 1):
        raise PlanError(f"repair of incident {incident_id}: scale_out needs replicas >= 1, got {params!r}")
    if kind == "flag_off" and not (isinstance(params.get("flag"), str) and params["flag"]):
        raise PlanError(f"repair of incident {incident_id}: flag_off needs a flag name, got {params!r}")
    goal = Goal(
        action="rollback",
        services=[service],
        environment=environment,
        text=f"repair incident {incident_id}: {kind} {service} in {environment}",
    )
    low = policy.rollout["low"]
    notes = [f"repair of incident {incident_id}: {kind} {service} in {environment} ({why})"]
    if needs_approval:
        notes.append(
            f"the policy's repair.approval_from puts a {kind} of {service} under a person's approval"
        )
    repair_id = f"{kind}:{service}"
    repair = Task(
        id=repair_id,
        kind=kind,  # type: ignore[arg-type]  # checked against REPAIR_KINDS above
        service=service,
        environment=environment,
        params={**params, "incident_id": incident_id} | ({"needs_approval": True} if needs_approval else {}),
        why=why,
    )
    watch = Task(
        id=f"watch:{service}",
        kind="watch",
        service=service,
        environment=environment,
        params={
            "duration_s": duration_seconds(low.bake_time),
            "analysis": [a.model_dump() for a in low.analysis],
        },
        depends_on=[repair_id],
        why=f"{service} recovers under the policy's low-band analysis",
    )
    notify = Task(
        id="notify",
        kind="notify",
        params={"message": f"incident {incident_id}: {why}"},
        depends_on=[watch.id],
        why="the on-call hears what the diagnosis did",
    )
    plan = Plan(
        plan_id="",
        goal=goal,
        created_at=now,
        policy_version=policy.version,
        gate="senior_review" if needs_approval else "standard",
        strategy=None,
        canary_required=False,
        deploy_order=[service],
        rollback_order=[service],
        notes=notes,
        tasks=[repair, watch, notify],
    )
    return _with_id(plan)


# --- order and checks ----------------------------------------------------------------------------------


def _cycle(tasks: list[Task]) -> list[str] | None:
    ids = {t.id for t in tasks}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for task in tasks:
        sorter.add(task.id, *[d for d in task.depends_on if d in ids])
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def execution_order(plan: Plan) -> list[str]:
    """Task ids in dependency order (graphlib); among tasks that are ready together, the one listed first
    in the plan goes first, so the order is the same on every run."""
    index = {t.id: i for i, t in enumerate(plan.tasks)}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for task in plan.tasks:
        sorter.add(task.id, *[d for d in task.depends_on if d in index])
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise PlanError(f"plan {plan.plan_id}: dependency cycle {' -> '.join(exc.args[1])}") from None
    ready: list[tuple[int, str]] = []
    order: list[str] = []
    while sorter.is_active():
        for task_id in sorter.get_ready():
            heapq.heappush(ready, (index[task_id], task_id))
        _, task_id = heapq.heappop(ready)
        order.append(task_id)
        sorter.done(task_id)
    return order


def _ancestors(tasks: list[Task]) -> dict[str, set[str]]:
    by_id = {t.id: t for t in tasks}
    memo: dict[str, set[str]] = {}

    def up(task_id: str) -> set[str]:
        if task_id not in memo:
            found: set[str] = set()
            for dep in by_id[task_id].depends_on:
                if dep in by_id:
                    found |= {dep} | up(dep)
            memo[task_id] = found
        return memo[task_id]

    for task in tasks:
        up(task.id)
    return memo


def allowed_environments(goal: Goal) -> set[str]:
    envs = {goal.environment}
    if goal.source_environment:
        envs.add(goal.source_environment)
    if goal.action == "ship" and goal.environment != STAGING:
        envs.add(STAGING)
    return envs


def check_plan(plan: Plan) -> list[str]:
    """Everything wrong with `plan`, as sentences naming the task (empty: the plan is legal). Rules: only
    the vocabulary's kinds; dependencies exist and have no cycle; a deploy to production comes after
    analyse and test; a promote comes after a canary when the policy's template has one; a `block` gate
    deploys nothing; a service's pending deploys wait for those of the services before it in the deploy
    order, and its rollbacks for those before it in the rollback order."""
    errors: list[str] = []
    ids = [t.id for t in plan.tasks]
    for task_id in sorted({i for i in ids if ids.count(i) > 1}):
        errors.append(f"task id {task_id!r} appears more than once")
    known = set(ids)
    envs = allowed_environments(plan.goal)
    for task in plan.tasks:
        if task.kind not in TASK_KINDS:
            errors.append(
                f"task {task.id!r}: unknown kind {task.kind!r} (the vocabulary: {', '.join(TASK_KINDS)})"
            )
        for dep in task.depends_on:
            if dep not in known:
                errors.append(f"task {task.id!r} depends on {dep!r}, which is not in the plan")
        if task.kind in PLACED_KINDS and (task.service is None or task.environment is None):
            errors.append(f"task {task.id!r}: a {task.kind} needs a service and an environment")
        if task.service is not None and task.service not in plan.deploy_order:
            errors.append(f"task {task.id!r}: service {task.service!r} is not one the goal names")
        if task.environment is not None and task.environment not in envs:
            errors.append(f"task {task.id!r}: environment {task.environment!r} is not one the goal names")
    cycle = _cycle(plan.tasks)
    if cycle:
        errors.append(f"dependency cycle: {' -> '.join(cycle)}")
        return errors
    ancestors = _ancestors(plan.tasks)
    by_id = {t.id: t for t in plan.tasks}
    live = [t for t in plan.tasks if t.status != "cancelled"]

    def before(task: Task, kind: str, service: str | None = None, env: str | None = None) -> bool:
        return any(
            by_id[a].kind == kind
            and by_id[a].status != "cancelled"
            and (service is None or by_id[a].service == service)
            and (env is None or by_id[a].environment == env)
            for a in ancestors[task.id]
        )

    blocked = any(t.kind == "block" for t in live)
    for task in live:
        if task.kind not in DEPLOY_KINDS:
            continue
        if plan.gate == "block":
            errors.append(f"task {task.id!r}: the gate is block, nothing may deploy")
        elif blocked and task.status == "pending":
            errors.append(f"task {task.id!r}: the plan blocks the change but would still deploy")
        if is_production(task.environment):
            for needed in ("analyse", "test"):
                if not before(task, needed):
                    errors.append(
                        f"task {task.id!r} deploys to {task.environment} without {needed} before it"
                    )
        if (
            task.kind == "promote"
            and plan.canary_required
            and is_production(task.environment)
            and not before(task, "canary", task.service, task.environment)
        ):
            errors.append(
                f"task {task.id!r} promotes without a canary of {task.service} in {task.environment}; "
                f"the policy's rollout uses one"
            )
    for order, kinds in ((plan.deploy_order, DEPLOY_KINDS), (plan.rollback_order, frozenset({"rollback"}))):
        for first, then in itertools.pairwise(order):
            for task in live:
                if task.service != then or task.kind not in kinds or task.status != "pending":
                    continue
                for earlier in live:
                    if (
                        earlier.service == first
                        and earlier.kind in kinds
                        and earlier.status in ("pending", "running")
                        and earlier.environment == task.environment
                        and earlier.id not in ancestors[task.id]
                    ):
                        errors.append(
                            f"task {task.id!r} does not wait for {earlier.id!r} ({first} goes first)"
                        )
    return errors


# --- completing a proposed plan ------------------------------------------------------------------------

_EXTRA_KINDS = {"notify", "watch", "test"}  # what a proposal may add beyond the planner's tasks
_EXTRA_PARAMS: dict[str, set[str]] = {
    "notify": {"message", "channel"},
    "watch": {"duration_s"},
    "test": {"suites"},
}
_STATE_FIELDS = ("status", "detail", "actions", "started_at", "finished_at")


def _why_added(task: Task) -> str:
    if task.kind in ("analyse", "test"):
        return "a deploy needs analyse and test before it"
    if task.kind == "canary":
        return "the policy's rollout template has a canary"
    return "the goal needs it"


def _extra_params(task: Task, policy: Policy, notes: list[str]) -> dict[str, Any]:
    allowed = _EXTRA_PARAMS.get(task.kind, set())
    kept: dict[str, Any] = {}
    for key, value in task.params.items():
        if key not in allowed:
            notes.append(f"proposed task {task.id!r}: parameter {key!r} dropped")
            continue
        if key == "suites":
            names = (
                [s.get("name") if isinstance(s, dict) else s for s in value]
                if isinstance(value, list)
                else []
            )
            good = [n for n in names if isinstance(n, str) and n in policy.suites]
            if len(good) != len(names):
                notes.append(f"proposed task {task.id!r}: suites not declared in the policy dropped")
            value = [{"name": n, "resource": policy.suites[n].resource, "mandatory": False} for n in good]
        elif key == "duration_s":
            if not isinstance(value, int | float) or not 0 <= value <= 7 * 86_400:
                notes.append(f"proposed task {task.id!r}: duration_s {value!r} dropped")
                continue
        else:
            value = str(value)[:500]
        kept[key] = value
    return kept


def _proposed_tasks(proposed: Plan | dict[str, Any]) -> list[Any]:
    if isinstance(proposed, Plan):
        return [t.model_dump() for t in proposed.tasks]
    if not isinstance(proposed, dict) or not isinstance(proposed.get("tasks"), list):
        raise PlanError("a proposed plan is a mapping with a list under 'tasks'")
    return list(proposed["tasks"])


def complete_plan(
    proposed: Plan | dict[str, Any],
    goal: Goal | str,
    decision: Decision | None,
    policy: Policy,
    *,
    now: datetime | None = None,
) -> Plan:
    """A legal plan from a proposed one (e.g. an LLM's): proposed tasks outside the vocabulary or the goal
    are rejected with the reason in `notes`; the planner's tasks the proposal left out are added back; the
    planner's parameters always stand (a proposal cannot change canary steps or suites); the proposal may
    add notify, watch and test tasks and dependencies that close no cycle."""
    goal = parse_goal(goal) if isinstance(goal, str) else goal
    reference = plan_goal(goal, decision, policy, now=now)
    ref_by_key = {(t.kind, t.service, t.environment): t for t in reference.tasks}
    envs = allowed_environments(goal)
    notes: list[str] = []
    rename: dict[str, str] = {}  # proposed id -> id in the completed plan
    matched: set[str] = set()
    extras: list[Task] = []
    proposal_edges: list[tuple[str, str]] = []  # (task, dependency) in proposed ids
    proposal: list[Task] = []
    for number, raw in enumerate(_proposed_tasks(proposed), start=1):
        label = f"proposed task {number}"
        if not isinstance(raw, dict):
            notes.append(f"rejected {label}: not a mapping")
            continue
        label = f"proposed task {number} ({str(raw.get('id'))[:60]!r})"
        kind = raw.get("kind")
        if kind not in TASK_KINDS:
            notes.append(f"rejected {label}: unknown kind {str(kind)[:60]!r}; known: {', '.join(TASK_KINDS)}")
            continue
        clean = {k: v for k, v in raw.items() if k not in _STATE_FIELDS}
        try:
            task = Task.model_validate(clean)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(task)"
            notes.append(f"rejected {label}: {where}: {first['msg']}")
            continue
        reason = None
        if task.service is not None and task.service not in reference.deploy_order:
            reason = f"service {task.service!r} is not one the goal names"
        elif task.environment is not None and task.environment not in envs:
            reason = f"environment {task.environment!r} is not one the goal names"
        elif task.kind in ("rollback", "block", "record_incident") and goal.action != "rollback":
            reason = f"only re-planning after a failure adds a {task.kind}"
        elif task.kind in DEPLOY_KINDS and reference.gate == "block":
            reason = "the gate is block: nothing may deploy"
        elif task.kind in PLACED_KINDS and (task.service is None or task.environment is None):
            reason = f"a {task.kind} needs a service and an environment"
        elif task.id in rename:
            reason = "its id is used by an earlier proposed task"
        if reason:
            notes.append(f"rejected {label}: {reason}")
            continue
        key = (task.kind, task.service, task.environment)
        planned = ref_by_key.get(key)
        if planned is not None and planned.id not in matched:
            matched.add(planned.id)
            rename[task.id] = planned.id
        elif task.kind in _EXTRA_KINDS:
            new_id, n = task.id, 2
            while new_id in {t.id for t in reference.tasks} | {t.id for t in extras}:
                new_id, n = f"{task.id.split('#')[0]}#{n}", n + 1
            rename[task.id] = new_id
            extras.append(
                task.model_copy(
                    update={
                        "id": new_id,
                        "depends_on": [],
                        "params": _extra_params(task, policy, notes),
                        "why": "proposed",
                    }
                )
            )
        else:
            notes.append(f"rejected {label}: this goal's plan has no such {task.kind}")
            continue
        proposal.append(task)
        proposal_edges += [(task.id, dep) for dep in task.depends_on]
    cycle = _cycle(proposal)
    if cycle:
        notes.append(
            f"the proposal's dependencies form a cycle {' -> '.join(cycle)}; the planner's order stands"
        )
    for task in reference.tasks:
        if task.id not in matched:
            notes.append(f"added {task.id!r}: {_why_added(task)}")
    tasks = [t.model_copy(deep=True) for t in reference.tasks] + extras
    by_id = {t.id: t for t in tasks}
    for task_id, dep in proposal_edges:
        if cycle and task_id in cycle and dep in cycle:
            continue
        if dep not in rename:
            notes.append(f"dropped the dependency of {task_id!r} on {dep!r}: no such task")
            continue
        task, target = by_id[rename[task_id]], rename[dep]
        if target in task.depends_on:
            continue
        task.depends_on.append(target)
        closed = _cycle(tasks)
        if closed:
            task.depends_on.remove(target)
            notes.append(
                f"dropped the dependency of {task_id!r} on {dep!r}: it closes the cycle {' -> '.join(closed)}"
            )
    plan = _with_id(reference.model_copy(update={"tasks": tasks, "notes": reference.notes + notes}))
    errors = check_plan(plan)
    if errors:  # the planner's own tasks are legal, so this is a bug in the completion, not in the proposal
        raise PlanError("the completed plan is not legal: " + "; ".join(errors))
    return plan


# --- re-planning after a failure -----------------------------------------------------------------------


def _dependants(plan: Plan, task_id: str) -> set[str]:
    found: set[str] = set()
    frontier = [task_id]
    while frontier:
        current = frontier.pop()
        for task in plan.tasks:
            if current in task.depends_on and task.id not in found:
                found.add(task.id)
                frontier.append(task.id)
    return found


def _fresh_id(plan: Plan, base: str, taken: set[str]) -> str:
    new_id, n = base, 2
    while new_id in taken:
        new_id, n = f"{base}#{n}", n + 1
    taken.add(new_id)
    return new_id


def replan_on_failure(plan: Plan, failed_task: str, why: str) -> Plan:
    """The plan after `failed_task` failed: its dependants are cancelled, and
    - a failed canary, promote or watch rolls back every service already shipped to that environment (in
      rollback order), blocks the change and, in production, records an incident;
    - a failed analyse, test or deploy blocks the change and notifies;
    - a failed rollback records an incident and notifies; a failed block or incident record notifies.
    Once a block is planned, no other pending deploy runs."""
    failed = plan.task(failed_task)
    plan = plan.model_copy(deep=True)
    by_id = {t.id: t for t in plan.tasks}
    by_id[failed_task].status = "failed"
    by_id[failed_task].detail = by_id[failed_task].detail or why
    taken = set(by_id)
    ref = plan.goal.ref
    added: list[Task] = []
    reason = f"re-planned: {failed_task} failed: {why}"
    env = failed.environment
    block = notify = incident = False
    rollback_services: list[str] = []
    if failed.kind in ("canary", "promote", "watch") and env is not None:
        shipped = {
            t.service
            for t in plan.tasks
            if t.kind in DEPLOY_KINDS
            and t.environment == env
            and t.status in ("succeeded", "failed", "running")
        } | {failed.service}
        rollback_services = [s for s in plan.rollback_order if s in shipped]
        block, notify, incident = True, True, is_production(env)
    elif failed.kind in ("analyse", "test", "deploy"):
        block = notify = True
    elif failed.kind == "rollback":
        notify, incident = True, True
    elif failed.kind in ("block", "record_incident"):
        notify = True
    previous: str | None = None
    for shipped_service in rollback_services:
        back = Task(
            id=_fresh_id(plan, f"rollback:{shipped_service}", taken),
            kind="rollback",
            service=shipped_service,
            environment=env,
            params={"to": "previous", "from": ref},
            depends_on=[previous] if previous else [],
            why=reason,
        )
        added.append(back)
        previous = back.id
    if block:
        added.append(
            Task(
                id=_fresh_id(plan, "block", taken),
                kind="block",
                params={"ref": ref, "reason": reason},
                why=reason,
            )
        )
    if incident:
        incident_service = failed.service
        added.append(
            Task(
                id=_fresh_id(
                    plan,
                    f"record_incident:{incident_service}" if incident_service else "record_incident",
                    taken,
                ),
                kind="record_incident",
                service=incident_service,
                environment=env,
                params={
                    "severity": "critical" if failed.kind == "rollback" else "high",
                    "failed_task": failed_task,
                    "summary": f"{failed.describe()} of {ref or 'the previous version'} failed: {why}"[:2000],
                },
                why=reason,
            )
        )
    if notify:
        added.append(
            Task(
                id=_fresh_id(plan, "notify", taken),
                kind="notify",
                params={"message": f"{plan.goal.describe()}: {failed_task} failed: {why}"[:2000]},
                why=reason,
            )
        )
    cancel = _dependants(plan, failed_task)
    if block:
        cancel |= {t.id for t in plan.tasks if t.kind in DEPLOY_KINDS | {"watch", "test", "analyse"}}
    cancelled = []
    for task in plan.tasks:
        if task.id in cancel and task.status in ("pending", "running"):
            task.status = "cancelled"
            task.detail = f"not run: {failed_task} failed"
            cancelled.append(task.id)
    plan.tasks += added
    plan.replans.append(
        Replan(failed_task=failed_task, why=why, added=[t.id for t in added], cancelled=cancelled)
    )
    return plan


# --- the plan file ------------------------------------------------------------------------------------


def save_plan(plan: Plan, path: Path) -> None:
    """Write the plan as YAML, atomically (a temporary file beside it, then `os.replace`), so a crash never
    leaves half a plan: the file is the run's state too."""
    import yaml

    path = Path(path)
    header = (
        f"# awo plan {plan.plan_id}: {plan.goal.describe()}\n"
        "# `awo run` executes it and records each task's status here; a re-run resumes.\n"
    )
    body = yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(header + body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_plan(path: Path) -> Plan:
    """A plan file. A bad file is an error naming the file and the field."""
    import yaml

    path = Path(path)
    try:
        doc: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError(f"plan {path}: expected a mapping at the top level")
    try:
        plan = Plan.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise PlanError(f"plan {path}: {where}: {first['msg']}{more}") from None
    errors = check_plan(plan)
    if errors:
        raise PlanError(
            f"plan {path}: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    return plan
