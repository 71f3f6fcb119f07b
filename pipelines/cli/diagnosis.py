"""`awo diagnose`: rank the culprits of an incident and propose a policy-allowed repair."""

from __future__ import annotations

import getpass
import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from features.errors import AwoError, BadConfig
from pipelines.cli.root import app, console, load_settings

if TYPE_CHECKING:
    import pandas as pd

    from agents.diagnosis import Diagnosis, Repair
    from features.settings import Settings


def _tables_dir(data: Path | None, settings: Settings) -> Path:
    """`--data`, else the one repository under the data root that has ingested incidents."""
    from features.tables import INCIDENTS_FILE

    if data is not None:
        return data
    found = sorted(p.parent for p in settings.data_dir.glob(f"*/{INCIDENTS_FILE}"))
    if len(found) != 1:
        where = ", ".join(str(p) for p in found) or "none"
        raise BadConfig(
            f"--data: give the repository's data directory (repositories with incidents under "
            f"{settings.data_dir}: {where})"
        )
    return found[0]


def _models(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """The champion change-risk and deploy-failure models, where the registry has them."""
    from models.registry import connect, load, registry_failures
    from serving.champions import unreachable

    notes: list[str] = []
    loaded: dict[str, Any] = {}
    try:
        problem = unreachable(connect(settings))
    except registry_failures() as exc:
        problem = str(exc)
    if problem:
        return {}, [f"model registry unavailable ({problem}): failure and change-risk scores unknown"]
    failures: tuple[type[BaseException], ...] = (AwoError, *registry_failures())
    for name in ("deploy-failure", "change-risk"):
        try:
            loaded[name] = load(name)
        except failures as exc:
            notes.append(f"{name} scores unknown: {str(exc).splitlines()[0]}")
    return loaded, notes


def _failure_scores(
    candidates: list[str], deployments: pd.DataFrame, repo: str, model: Any, settings: Settings
) -> dict[str, float]:
    from features.store import open_store
    from serving.core import DeploymentPlan, score_deployment

    store = open_store(settings)
    rows = deployments.set_index("deploy_id")
    scores = {}
    for deploy_id in candidates:
        row = rows.loc[deploy_id]
        plan = DeploymentPlan(
            repo=repo,
            service=row["service"],
            environment=row["environment"],
            commits=list(row["shipped"]) if "shipped" in rows.columns else [],
            strategy=row["strategy"],
            started_at=row["started_at"].to_pydatetime(),
        )
        scores[deploy_id] = score_deployment(plan, model, store, settings).probability
    return scores


def _commit_risk(shas: list[str], repo: str, model: Any, settings: Settings) -> dict[str, float]:
    from features.store import open_store
    from serving.core import CommitRef, CommitScore, score_commits

    scored = score_commits([CommitRef(repo=repo, sha=s) for s in shas], model, open_store(settings), settings)
    return {r.sha: r.probability for r in scored if isinstance(r, CommitScore) and r.sha is not None}


def _churn(shas: list[str], tables: Path) -> dict[str, float]:
    from features.tables import COMMITS_FILE, read_table

    commits = read_table(tables / COMMITS_FILE)
    if commits is None or not shas:
        return {}
    known = commits[commits["sha"].isin(shas)]
    return dict(zip(known["sha"], (known["la"] + known["ld"]).astype(float), strict=True))


def _report(diagnosis: Diagnosis, repair: Repair | None, notes: list[str]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return {
        "incident": {k: plain(v) for k, v in asdict(diagnosis.incident).items()},
        "culprit": diagnosis.culprit.deploy_id if diagnosis.culprit else None,
        "why": diagnosis.why,
        "candidates": [{k: plain(v) for k, v in asdict(c).items()} for c in diagnosis.candidates],
        "commits": [asdict(c) for c in diagnosis.commits],
        "repair": asdict(repair) if repair else None,
        "notes": notes,
    }


@app.command()
def diagnose(
    incident_id: Annotated[str, typer.Argument(help="the incident's id, as ingested")],
    data: Annotated[
        Path | None, typer.Option("--data", help="the repository's data directory (as for awo ingest)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the diagnosis as JSON")] = False,
    execute: Annotated[bool, typer.Option("--execute", help="run the proposed repair plan")] = False,
    approve: Annotated[
        bool,
        typer.Option("--approve", help="approve a repair that needs a person (if the policy allows you)"),
    ] = False,
    top: Annotated[int, typer.Option(min=1, max=100, help="candidates shown")] = 5,
) -> None:
    """Rank the deployments that may have caused an incident (its service's and its dependencies', by time,
    blast radius and failure score), the riskiest commits of the top one, and the policy's repair.
    Exit 0; with --execute, the repair run's exit code (0 succeeded, 1 failed)."""
    from agents.diagnosis import IncidentFacts, choose_repair, rank_commits, rank_culprits
    from agents.engine import audit_log, check_may_override, policy_of
    from features.tables import DEPLOYMENTS_FILE, INCIDENTS_FILE, read_table
    from features.topology import load_topology

    settings = load_settings()
    tables = _tables_dir(data, settings)
    incidents = read_table(tables / INCIDENTS_FILE)
    deployments = read_table(tables / DEPLOYMENTS_FILE)
    if incidents is None or deployments is None:
        raise AwoError(f"no ingested incidents and deployments in {tables}: run `awo ingest` first")
    match = incidents[incidents["incident_id"] == incident_id]
    if match.empty:
        raise AwoError(f"incident {incident_id!r} is not among the {len(incidents)} ingested in {tables}")
    row = match.iloc[0]
    facts = IncidentFacts(incident_id, row["service"], row["started_at"].to_pydatetime(), row["severity"])
    notes: list[str] = []
    topology = load_topology(settings.service_map)
    if settings.service_map is None:
        notes.append("no service map (AWO_SERVICE_MAP): only the incident's own service is searched")
    policy = policy_of(settings)
    repo = tables.name
    diagnosis = rank_culprits(facts, deployments, topology, incidents=incidents)
    models, model_notes = _models(settings) if diagnosis.candidates else ({}, [])
    notes += model_notes
    if "deploy-failure" in models:
        ids = [c.deploy_id for c in diagnosis.candidates]
        scores = _failure_scores(ids, deployments, repo, models["deploy-failure"], settings)
        diagnosis = rank_culprits(facts, deployments, topology, failure_scores=scores, incidents=incidents)
    if diagnosis.candidates:
        first = diagnosis.culprit or diagnosis.candidates[0]
        shipped_of = dict(zip(deployments["deploy_id"], deployments.get("shipped", []), strict=False))
        shas = [str(s) for s in shipped_of.get(first.deploy_id, [])]
        risk = _commit_risk(shas, repo, models["change-risk"], settings) if "change-risk" in models else {}
        diagnosis.commits = rank_commits(shas, risk, _churn(shas, tables))
    repair = choose_repair(diagnosis, policy.repair, topology)
    report = _report(diagnosis, repair, notes)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(diagnosis, repair, notes, top)
    if not execute:
        return
    if repair is None:
        raise AwoError(f"incident {incident_id}: the policy's repair section allows nothing that applies")
    _execute(incident_id, repair, report, policy, settings, approve, audit_log, check_may_override)


def _print(diagnosis: Diagnosis, repair: Repair | None, notes: list[str], top: int) -> None:
    inc = diagnosis.incident
    console.print(
        f"incident {inc.incident_id}: {inc.service}, {inc.severity}, started {inc.started_at.isoformat()}",
        highlight=False,
    )
    console.print(f"  {len(diagnosis.candidates)} candidate deployments; {diagnosis.why}", highlight=False)
    if diagnosis.candidates:
        console.print(
            "  rank  deploy_id       service          relation              hours before  failure  score",
            highlight=False,
        )
    for rank, c in enumerate(diagnosis.candidates[:top], start=1):
        failure = "-" if c.failure_score is None else f"{c.failure_score:.3f}"
        console.print(
            f"  {rank:>4}  {c.deploy_id:<15} {c.service:<16} {c.relation:<21} {c.hours_before:>12.1f}  "
            f"{failure:>7}  {c.score:.3f}",
            highlight=False,
        )
    if diagnosis.commits:
        shown = diagnosis.commits[:5]
        console.print(
            f"  riskiest of its {len(diagnosis.commits)} commits: "
            + ", ".join(f"{c.sha[:10]} ({c.source} {c.risk:.3g})" for c in shown),
            highlight=False,
        )
    if repair is None:
        console.print("  repair: none the policy allows applies", highlight=False)
    else:
        approval = "needs a person's approval (--approve)" if repair.needs_approval else "no approval needed"
        console.print(
            f"  repair: {repair.kind} {repair.service} in {repair.environment} {repair.params or ''}: "
            f"{repair.why}; {approval}",
            highlight=False,
        )
    for note in notes:
        console.print(f"note: {note}", highlight=False)


def _execute(
    incident_id: str,
    repair: Repair,
    report: dict[str, Any],
    policy: Any,
    settings: Settings,
    approve: bool,
    audit_log: Any,
    check_may_override: Any,
) -> None:
    from agents.audit import new_decision_id
    from agents.diagnosis import repair_plan
    from agents.executor import DryRunExecutor
    from agents.planner import PlanError, needs_approval
    from agents.rollouts import carry_out, rollout_file

    approved_by = None
    if approve:
        approved_by = getpass.getuser()  # who runs the command: not a name typed on it
        check_may_override(policy, approved_by)
    now = datetime.now(UTC)
    plan = repair_plan(incident_id, repair, policy, now)
    decision_id = new_decision_id()
    plan = plan.model_copy(update={"decision_id": decision_id})
    if needs_approval(plan) and approved_by is None:  # say so before anything is recorded
        raise PlanError(
            f"the repair of {incident_id} ({repair.kind} of {repair.service}) waits for a person: --approve"
        )
    log = audit_log(settings)
    record = {"kind": "diagnosis", "decision_id": decision_id, "plan_id": plan.plan_id, "policy_version":
              policy.version, "incident_id": incident_id, "culprit": report["culprit"], "why": report["why"],
              "candidates": report["candidates"][:3], "repair": report["repair"]}  # fmt: skip
    log.append(json.loads(json.dumps(record, default=str)))
    if settings.executor == "dry-run":
        # the dry run starts from what the tables say runs: the blamed deployment's sha, where one is blamed
        running = repair.params.get("from") or report["culprit"]
        executor: Any = DryRunExecutor(
            running={(repair.environment, repair.service): str(running)} if running else None
        )
    else:
        from agents.kube import executor_from_settings

        executor = executor_from_settings(settings, plan.plan_id)
    console.print(
        f"executing plan {plan.plan_id} with the {executor.name} executor "
        f"(state: {rollout_file(settings.data_dir, plan.plan_id)})",
        highlight=False,
    )
    run = carry_out(
        plan,
        settings,
        executor=executor,
        approved_by=approved_by,
        on_event=lambda event: console.print(event.message, highlight=False),
    )
    report_run = run.report
    for line in report_run.summary_lines():
        console.print(line, highlight=False)
    raise typer.Exit(report_run.exit_code)
