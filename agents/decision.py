"""`decide(context, policy) -> Decision`: the gate, the test plan and the rollout plan of a change, with the
reasons. A pure function: the same context and policy give the same decision, with no I/O."""

from __future__ import annotations

import fnmatch
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from agents.context import ChangeContext
from agents.gating import RiskSignal, band_of
from agents.policy import Policy, Rule
from agents.rollout import RolloutPlan, plan_rollout
from agents.security import AssessedFinding, SecurityScan, findings_floor, gating_rule
from agents.terraform import stateful_changes
from agents.test_plan import TestPlan, plan_tests
from agents.vocabulary import BANDS, Band, Gate, gate_level, tighter
from features.topology import CRITICALITY_LEVEL

EXIT_CODES: dict[Gate, int] = {"fast_track": 0, "standard": 0, "senior_review": 3, "block": 4}


class Reason(BaseModel):
    kind: Literal[
        "band",
        "driver",
        "rule",
        "environment",
        "infrastructure",
        "security",
        "schedule",
        "error",
        "llm",
        "override",
    ]
    code: str = Field(description="stable identifier: the rule name, the feature, the guardrail")
    message: str


class FindingOutcome(BaseModel):
    """A security finding as the decision weighed it: the row the audit record keeps and `awo explain`
    prints, and what a waiver names (`finding_id`)."""

    finding_id: str
    tool: str
    rule_id: str
    severity: str
    path: str
    line: int | None
    status: Literal["new", "pre-existing", "unknown"]
    on_changed_line: bool
    service: str
    message: str
    gating_rule: str | None = Field(default=None, description="the policy rule it triggered (None: reported)")
    gate: Gate | None = Field(default=None, description="the gate it requires at least")


class LlmReview(BaseModel):
    """What the LLM said and what of it counted (agents/reasoning.py fills it)."""

    model: str
    rationale: str = ""
    accepted: list[dict[str, Any]] = Field(default_factory=list)
    rejected: list[dict[str, Any]] = Field(default_factory=list, description="proposals refused, with why")
    guardrails: list[str] = Field(default_factory=list, description="guardrails that fired")
    fallback: str | None = Field(default=None, description="why the deterministic decision stands alone")
    prompt: str = ""
    response: str = ""


class Decision(BaseModel):
    decision_id: str | None = Field(default=None, description="ULID, assigned when recorded in the audit log")
    repo: str
    shas: list[str]
    services: list[str]
    environment: str
    gate: Gate
    band: Band | None = Field(description="the risk band; None when the change could not be scored")
    probability: float | None
    reasons: list[Reason]
    rules_fired: list[str]
    test_plan: TestPlan
    rollout_plan: RolloutPlan
    policy_version: str
    model: dict[str, str | None] | None = None
    fallback: str | None = Field(default=None, description="why the policy's on_error gate applied")
    llm: LlmReview | None = None
    findings: list[FindingOutcome] = Field(
        default_factory=list, description="security findings weighed: new first, then the rest (at most 200)"
    )
    gate_without_findings: Gate | None = Field(
        default=None,
        description="the gate without the security findings' gates (what waiving all of them leaves)",
    )
    decided_at: datetime
    inputs_digest: str

    @computed_field(description="what `awo decide` exits with: 0 proceed, 3 senior review, 4 block")  # type: ignore[prop-decorator]
    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.gate]


def _matches(rule: Rule, context: ChangeContext) -> bool:
    when = rule.when
    kinds = context.kinds()
    if when.file_kinds and not kinds & set(when.file_kinds):
        return False
    if when.only_file_kinds and not (context.files and kinds <= set(when.only_file_kinds)):
        return False
    if when.paths and not any(fnmatch.fnmatchcase(f.path, p) for f in context.files for p in when.paths):
        return False
    if when.services and not set(context.services) & set(when.services):
        return False
    if when.min_criticality is not None:
        needed = CRITICALITY_LEVEL[when.min_criticality]
        levels = [CRITICALITY_LEVEL[context.topology.service(s).criticality] for s in context.services]
        if not levels or max(levels) < needed:
            return False
    return True


def _band_for_gate(gate: Gate, policy: Policy) -> Band:
    """The riskiest band whose gate is no tighter than `gate` (for an unscored change's plans)."""
    fitting = [b for b in BANDS if gate_level(getattr(policy.gates, b)) <= gate_level(gate)]
    return fitting[-1] if fitting else "critical"


def decide(context: ChangeContext, policy: Policy) -> Decision:
    reasons: list[Reason] = []
    fallback = None
    risk = context.risk
    if risk is None:
        gate: Gate = policy.on_error
        band: Band | None = None
        plan_band = _band_for_gate(gate, policy)
        fallback = (
            f"not scored ({context.risk_error or 'no risk score'}): the policy's on_error gate {gate} applies"
        )
        reasons.append(Reason(kind="error", code="on_error", message=fallback))
    else:
        band = band_of(RiskSignal.from_reference(risk.probability, risk.reference), policy.risk_bands)
        plan_band = band
        gate = getattr(policy.gates, band)
        reasons.append(
            Reason(
                kind="band",
                code=band,
                message=f"{band} risk: calibrated probability {risk.probability:.3f} "
                f"({risk.model_name} v{risk.model_version})",
            )
        )
        riskier = [d for d in risk.drivers if d.contribution > 0]
        for d in sorted(riskier, key=lambda d: -d.contribution)[: policy.top_drivers]:
            value = "unknown" if d.value is None else f"{d.value:g}"
            reasons.append(
                Reason(
                    kind="driver",
                    code=d.feature,
                    message=f"{d.feature} = {value} raises the risk ({d.contribution:+.2f} log-odds)",
                )
            )

    fired: list[str] = []
    rule_suites: dict[str, list[str]] = {}
    matched = [r for r in policy.rules if _matches(r, context)]
    for (
        rule
    ) in matched:  # relaxations first: they may only loosen the band's gate, never a rule or production
        relaxable = risk is not None and gate != "block"  # a relaxation never lifts a block
        if rule.max_gate is not None and relaxable and gate_level(gate) > gate_level(rule.max_gate):
            gate = rule.max_gate
            fired.append(rule.name)
            reasons.append(
                Reason(kind="rule", code=rule.name, message=f"{rule.reason} (at most {rule.max_gate})")
            )
    for rule in matched:
        if rule.max_gate is not None:
            continue
        fired.append(rule.name)
        for suite in rule.require_suites:
            rule_suites.setdefault(suite, []).append(rule.name)
        if rule.min_gate is not None:
            gate = tighter(gate, rule.min_gate)
        reasons.append(Reason(kind="rule", code=rule.name, message=rule.reason))

    env = policy.environment
    for service in context.services:
        state = context.service_states.get(service)
        if state is None:
            continue
        if state.open_incidents:
            ids = ", ".join(i.incident_id for i in state.open_incidents)
            gate = tighter(gate, env.open_incident_gate)
            reasons.append(
                Reason(
                    kind="environment",
                    code="open_incident",
                    message=f"{service} has open incident(s) {ids}: at least {env.open_incident_gate}",
                )
            )
        if state.error_budget_left is not None and state.error_budget_left <= 0:
            gate = tighter(gate, env.budget_exhausted_gate)
            reasons.append(
                Reason(
                    kind="environment",
                    code="error_budget_spent",
                    message=f"{service} has spent its error budget ({state.error_budget_left:.0%} left): "
                    f"at least {env.budget_exhausted_gate}",
                )
            )

    plan = context.terraform
    if plan is not None:
        reasons.append(Reason(kind="infrastructure", code="terraform-plan", message=plan.summary()))
        lost = stateful_changes(plan, policy.terraform.stateful_types)
        if lost:
            gate = tighter(gate, policy.terraform.stateful_gate)
            reasons.append(
                Reason(
                    kind="infrastructure",
                    code="terraform-stateful",
                    message="the plan destroys or replaces stateful resources "
                    + ", ".join(f"{c.address} ({c.action})" for c in lost)
                    + f": at least {policy.terraform.stateful_gate}",
                )
            )

    findings, security_gate = _weigh_findings(context, policy, reasons)

    for warning in context.warnings:
        reasons.append(Reason(kind="environment", code="input_unknown", message=warning))
    test_plan = plan_tests(context, plan_band, policy, rule_suites)
    rollout = plan_rollout(context, plan_band, policy)
    for text in rollout.schedule_reasons:
        reasons.append(Reason(kind="schedule", code="deploy_at", message=text))
    if rollout.deploy_at is None:
        gate = tighter(gate, "senior_review")
        reasons.append(
            Reason(kind="schedule", code="no_slot", message="no deploy slot found: a person picks the time")
        )

    gate_without_findings = gate if context.security is not None else None
    if security_gate is not None:
        gate = tighter(gate, security_gate)

    return Decision(
        repo=context.repo,
        shas=context.shas,
        services=context.services,
        environment=context.environment,
        gate=gate,
        band=band,
        probability=None if risk is None else risk.probability,
        reasons=reasons,
        rules_fired=fired,
        test_plan=test_plan,
        rollout_plan=rollout,
        policy_version=policy.version,
        model=None
        if risk is None
        else {"name": risk.model_name, "version": risk.model_version, "kind": risk.model_kind},
        fallback=fallback,
        findings=findings,
        gate_without_findings=gate_without_findings,
        decided_at=context.now,
        inputs_digest=context.digest(),
    )


MAX_FINDING_ROWS = 200
MAX_FINDING_REASONS = 20


def _finding_text(a: AssessedFinding) -> str:
    f = a.finding
    where = "on a changed line" if a.on_changed_line else "outside the changed lines"
    return (
        f"{a.severity} {f.tool} {f.rule_id} at {f.where()} ({a.status}, {where}; finding {f.finding_id}): "
        f"{' '.join(f.message.split())[:200].rstrip('.')}"
    )


def _weigh_findings(
    context: ChangeContext, policy: Policy, reasons: list[Reason]
) -> tuple[list[FindingOutcome], Gate | None]:
    """The security findings as reasons and rows, and the tightest gate a new one requires (the policy's
    `security.rules`); findings that are not new, or off the changed lines, are counted, not gating."""
    scan: SecurityScan | None = context.security
    if scan is None:
        return [], None
    rows: list[FindingOutcome] = []
    shown = 0
    for a in scan.findings:
        rule = gating_rule(a, policy.security, lambda s: context.topology.service(s).criticality)
        f = a.finding
        rows.append(
            FindingOutcome(
                finding_id=f.finding_id,
                tool=f.tool,
                rule_id=f.rule_id,
                severity=a.severity,
                path=f.path,
                line=f.start_line,
                status=a.status,
                on_changed_line=a.on_changed_line,
                service=a.service,
                message=" ".join(f.message.split())[:300],
                gating_rule=None if rule is None else rule.name,
                gate=None if rule is None else rule.gate,
            )
        )
        if a.status == "new" and shown < MAX_FINDING_REASONS:
            shown += 1
            if rule is not None:
                text = f"{_finding_text(a)}; {rule.reason}: at least {rule.gate}"
                reasons.append(Reason(kind="security", code=rule.name, message=text))
            else:
                text = f"{_finding_text(a)}; reported, not gating"
                reasons.append(Reason(kind="security", code="finding-reported", message=text))
    counts = {s: sum(a.status == s for a in scan.findings) for s in ("new", "pre-existing", "unknown")}
    on_lines = sum(a.status == "new" and a.on_changed_line for a in scan.findings)
    base = "base " + ", ".join(scan.base_sources) if scan.base_sources else "no base scan"
    reasons.append(
        Reason(
            kind="security",
            code="security-scan",
            message=f"security scan {', '.join(scan.sources) or '-'} ({base}): "
            f"{len(scan.findings)} findings, {counts['new']} new ({on_lines} on changed lines), "
            f"{counts['pre-existing']} pre-existing, "
            f"{counts['unknown']} unknown (no base, off the changed lines: not gating)",
        )
    )
    rows.sort(key=lambda r: (r.gate is None, r.status != "new"))  # gating first, then new; stable otherwise
    return rows[:MAX_FINDING_ROWS], findings_floor(r.gate for r in rows)


DECISION_SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "decision.schema.json"


def output_schema() -> dict[str, Any]:
    """The JSON Schema of `awo decide --json` (a Decision plus the audit head), which CI scripts against."""
    schema = Decision.model_json_schema(mode="serialization")
    schema["title"] = "awo decision"
    schema["properties"]["audit_head"] = {
        "type": "string",
        "description": "the audit log's newest HMAC after this decision was recorded",
    }
    schema["required"] = [*schema.get("required", []), "audit_head"]
    return schema
