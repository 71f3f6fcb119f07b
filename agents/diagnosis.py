"""Incident diagnosis: rank the deployments that may have caused an incident, name the riskiest commits of
the top one, and choose a policy-allowed repair. Pure functions over the delivery tables and the service
map; the idea of combining time proximity, the dependency graph and deployment risk is Gandalf's (Li et
al., "Gandalf: An Intelligent, End-To-End Analytics Service for Safe Deployment in Cloud-Scale
Infrastructure", NSDI 2020)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import pandas as pd

from agents.planner import Plan, is_production, plan_repair
from agents.policy import Policy, RepairKind, RepairPolicy
from features.errors import BadTable
from features.topology import CRITICALITY_LEVEL, Topology

DEPLOYMENT_COLUMNS = ("deploy_id", "service", "environment", "started_at", "outcome")
FAILED_OUTCOMES = frozenset({"failed", "rolled-back", "aborted"})


@dataclass(frozen=True)
class IncidentFacts:
    """What the diagnosis knows of the incident: where and when it started."""

    incident_id: str
    service: str
    started_at: datetime
    severity: str = "high"


@dataclass(frozen=True)
class CulpritModel:
    """A fixed, documented scoring model (not fitted): score = relation prior × time kernel × failure
    evidence × blast-radius evidence, with a floor below which no deployment is blamed.

    - relation prior: `dependency_prior ** depth` (depth 0: the incident's own service);
    - time kernel: `exp(-hours / time_scale_hours)`, nothing older than `lookback_hours`;
    - failure evidence: (the deployment's failure score / `base_failure_rate`) ** `failure_weight` (unknown:
      1; the exponent tempers a model that is only moderately sure), times `failed_outcome_factor` when
      the deployment itself failed or was rolled back;
    - blast radius (Gandalf's spatial correlation): 1 + `co_incident_weight` per other service in the
      deployment's radius (it and every service that depends on it) with an incident after it, up to now.
    """

    lookback_hours: float = 72.0
    time_scale_hours: float = 18.0
    max_depth: int = 2
    dependency_prior: float = 0.5
    base_failure_rate: float = 0.1
    failure_weight: float = 0.5
    failed_outcome_factor: float = 3.0
    co_incident_weight: float = 0.5
    floor: float = 0.3


@dataclass(frozen=True)
class Candidate:
    """A deployment that may have caused the incident, with the evidence behind its score."""

    deploy_id: str
    service: str
    environment: str
    started_at: datetime
    relation: str  # "same service" or "dependency (depth d)"
    depth: int
    hours_before: float
    blast_radius: int  # services the deployment can reach: itself and every service depending on it
    co_incidents: int  # other services of the radius with an incident since the deployment
    failure_score: float | None
    outcome: str
    score: float
    sha: str | None = None  # what it shipped, when the table says
    previous_sha: str | None = None  # what ran before it in that environment: where a rollback goes


@dataclass(frozen=True)
class RiskyCommit:
    sha: str
    risk: float
    source: Literal["model", "churn"]  # the change-risk model's probability, or lines changed (fallback)


@dataclass
class Diagnosis:
    incident: IncidentFacts
    candidates: list[Candidate]
    culprit: Candidate | None
    why: str  # one line: why this culprit, or why none
    commits: list[RiskyCommit] = field(default_factory=list)


def _depths(topology: Topology, service: str, max_depth: int) -> dict[str, int]:
    """The incident's service at depth 0 and its dependencies (transitively) at their shortest depth."""
    depths = {service: 0}
    frontier = [service]
    for depth in range(1, max_depth + 1):
        frontier = [d for s in frontier for d in topology.service(s).depends_on if d not in depths]
        for name in frontier:
            depths.setdefault(name, depth)
    return depths


def blast_radius(topology: Topology, service: str) -> set[str]:
    """`service` and every service that depends on it, directly or not."""
    radius = {service}
    grew = True
    while grew:
        callers = {n for n, s in topology.services.items() if set(s.depends_on) & radius} - radius
        radius |= callers
        grew = bool(callers)
    return radius


def _checked(deployments: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in DEPLOYMENT_COLUMNS if c not in deployments.columns]
    if missing:
        raise BadTable(f"deployments table: missing columns {missing}")
    return deployments


def rank_culprits(
    incident: IncidentFacts,
    deployments: pd.DataFrame,
    topology: Topology,
    *,
    failure_scores: Mapping[str, float] | None = None,
    incidents: pd.DataFrame | None = None,
    model: CulpritModel | None = None,
) -> Diagnosis:
    """Production deployments of the incident's service and of its dependencies that started before it and
    within the look-back, best first, and the culprit (None when none scores above the floor).
    `deployments`: DEPLOYMENT_COLUMNS (started_at tz-aware); `failure_scores`: deploy_id → probability;
    `incidents`: other incidents (`service`, `started_at`) — only those started by now count."""
    model = model or CulpritModel()
    scores = failure_scores or {}
    at = pd.Timestamp(incident.started_at)
    depths = _depths(topology, incident.service, model.max_depth)
    deployments = _checked(deployments)
    window = deployments[
        deployments["service"].isin(list(depths))
        & (deployments["started_at"] <= at)
        & (deployments["started_at"] >= at - pd.Timedelta(hours=model.lookback_hours))
        & deployments["environment"].map(is_production)
    ]
    known = incidents[incidents["started_at"] <= at] if incidents is not None and len(incidents) else None
    shipped: dict[str, tuple[str | None, str | None]] = {}  # deploy_id -> (sha, sha of the one before it)
    if "sha" in deployments.columns:
        ordered = deployments.sort_values(["started_at", "deploy_id"])
        before = ordered.groupby(["service", "environment"])["sha"].shift(1)
        for deploy_id, sha, previous in zip(ordered["deploy_id"], ordered["sha"], before, strict=True):
            shipped[deploy_id] = (
                sha if isinstance(sha, str) else None,
                previous if isinstance(previous, str) else None,
            )
    candidates = []
    for row in window.itertuples():
        hours = (at - row.started_at).total_seconds() / 3600
        depth = depths[row.service]
        radius = blast_radius(topology, row.service)
        others = 0
        if known is not None:
            after = known[(known["started_at"] > row.started_at) & known["service"].isin(list(radius))]
            others = len(set(after["service"]) - {incident.service})
        p = scores.get(row.deploy_id)
        known_p = p if p is not None and math.isfinite(p) else model.base_failure_rate
        evidence = (max(known_p, 1e-6) / model.base_failure_rate) ** model.failure_weight
        if row.outcome in FAILED_OUTCOMES:
            evidence *= model.failed_outcome_factor
        score = (
            model.dependency_prior**depth
            * math.exp(-hours / model.time_scale_hours)
            * evidence
            * (1 + model.co_incident_weight * others)
        )
        candidates.append(
            Candidate(
                deploy_id=row.deploy_id,
                service=row.service,
                environment=row.environment,
                started_at=row.started_at.to_pydatetime(),
                relation="same service" if depth == 0 else f"dependency (depth {depth})",
                depth=depth,
                hours_before=round(hours, 2),
                blast_radius=len(radius),
                co_incidents=others,
                failure_score=p,
                outcome=row.outcome,
                score=score,
                sha=shipped.get(row.deploy_id, (None, None))[0],
                previous_sha=shipped.get(row.deploy_id, (None, None))[1],
            )
        )
    candidates.sort(key=lambda c: (-c.score, c.hours_before, c.deploy_id))
    if not candidates:
        why = (
            f"no production deployment of {incident.service} or its dependencies in the "
            f"{model.lookback_hours:g} h before the incident"
        )
        return Diagnosis(incident, [], None, why)
    top = candidates[0]
    if top.score < model.floor:
        why = f"no deployment is plausible: the best, {top.deploy_id}, scores {top.score:.3f} < {model.floor}"
        return Diagnosis(incident, candidates, None, why)
    why = f"{top.deploy_id} ({top.relation}, {top.hours_before:.1f} h before) scores {top.score:.3f}"
    return Diagnosis(incident, candidates, top, why)


def rank_commits(
    shipped: Sequence[str], risk: Mapping[str, float] | None = None, churn: Mapping[str, float] | None = None
) -> list[RiskyCommit]:
    """The shipped commits, riskiest first: by the change-risk model's probability where known, else by
    lines changed (size is the strongest single defect predictor in Kamei et al. 2013), after the scored."""
    risk, churn = risk or {}, churn or {}
    scored = [RiskyCommit(s, float(risk[s]), "model") for s in shipped if s in risk]
    rest = [RiskyCommit(s, float(churn.get(s, 0.0)), "churn") for s in shipped if s not in risk]
    scored.sort(key=lambda c: (-c.risk, c.sha))
    rest.sort(key=lambda c: (-c.risk, c.sha))
    return scored + rest


# --- repair ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repair:
    """The proposed repair: a kind of the policy's fixed set, where, its parameters, and whether a person
    approves it first."""

    kind: RepairKind
    service: str
    environment: str
    params: dict[str, object]
    needs_approval: bool
    why: str


def repair_plan(incident_id: str, repair: Repair, policy: Policy, now: datetime) -> Plan:
    """The plan that carries `repair` out (planner.plan_repair: the repair, a watch, a notification)."""
    return plan_repair(
        incident_id,
        repair.kind,
        repair.service,
        repair.environment,
        dict(repair.params),
        policy,
        needs_approval=repair.needs_approval,
        why=repair.why,
        now=now,
    )


def choose_repair(diagnosis: Diagnosis, policy: RepairPolicy, topology: Topology) -> Repair | None:
    """The first applicable repair of the policy's preference list: `on_culprit` when a deployment is blamed
    (acting on the culprit's service), `on_no_culprit` otherwise (acting on the incident's service).
    A flag_off applies only to a service the policy names a flag for. None: nothing allowed applies."""
    culprit = diagnosis.culprit
    service = culprit.service if culprit is not None else diagnosis.incident.service
    environment = culprit.environment if culprit is not None else "production"
    preferences = policy.on_culprit if culprit is not None else policy.on_no_culprit
    for kind in preferences:
        if kind not in policy.allowed:
            continue
        params: dict[str, object]
        if kind == "rollback":
            if culprit is None or culprit.previous_sha is None:
                continue  # a rollback needs to know what ran before the culprit
            params = {"to": culprit.previous_sha, "from": culprit.sha, "from_deploy": culprit.deploy_id}
            why = (
                f"roll back {culprit.deploy_id}, the likeliest culprit, to {culprit.previous_sha[:12]} "
                "which ran before it"
            )
        elif kind == "flag_off":
            flag = policy.flags.get(service)
            if flag is None:
                continue
            params = {"flag": flag}
            why = f"switch off {flag}, the flag guarding {service}'s new code"
        elif kind == "scale_out":
            params = {"replicas": policy.scale_out_replicas}
            why = f"scale {service} out to {policy.scale_out_replicas} replicas"
        else:
            params = {}
            why = f"restart {service}" + ("" if culprit else ": no deployment is to blame")
        level = policy.approval_from.get(kind)
        criticality = CRITICALITY_LEVEL[topology.service(service).criticality]
        needs = level is not None and criticality >= CRITICALITY_LEVEL[level]
        return Repair(kind, service, environment, params, needs, why)
    return None


def naive_culprit(incident: IncidentFacts, deployments: pd.DataFrame) -> str | None:
    """The baseline: the latest production deployment of the incident's own service before it."""
    own = _checked(deployments)
    own = own[
        (own["service"] == incident.service)
        & (own["started_at"] <= pd.Timestamp(incident.started_at))
        & own["environment"].map(is_production)
    ]
    return None if own.empty else str(own.sort_values("started_at").iloc[-1]["deploy_id"])
