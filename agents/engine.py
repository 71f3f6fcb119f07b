"""One decision, end to end, for the CLI and the agents service alike: gather the context, decide, let the
LLM (when configured) review it within the policy's bounds, and record it in the audit log. Also the
human side: overrides and waivers of security findings (only by those the policy names) and a readable
account of a recorded decision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agents.assemble import ChangeRef, RiskScorer, assemble
from agents.audit import AuditLog, new_decision_id
from agents.context import ChangeContext
from agents.decision import Decision, decide
from agents.policy import Policy, load_policy
from agents.security import findings_floor
from agents.vocabulary import GATES, Gate, gate_level
from features.errors import AwoError
from features.settings import Settings


class OverrideRefused(AwoError):
    """The caller may not override this decision this way."""


@dataclass(frozen=True)
class Recorded:
    decision: Decision
    audit_head: str  # the audit log's newest HMAC after this record: keep it to check the log later
    audit_seq: int


def audit_log(settings: Settings) -> AuditLog:
    return AuditLog(settings.data_dir / "audit", settings.audit_secret.get_secret_value())


def policy_of(settings: Settings, path: Path | None = None) -> Policy:
    return load_policy(path or settings.policy)


def decision_record(decision: Decision, context: ChangeContext) -> dict[str, Any]:
    """What the audit log keeps of a decision: inputs digest, scores and model, policy version, the LLM's
    prompt and response with the guardrails that fired, the security findings weighed (one row each), and
    the final decision."""
    risk = context.risk
    return {
        "kind": "decision",
        "decision_id": decision.decision_id,
        "inputs_digest": decision.inputs_digest,
        "repo": decision.repo,
        "shas": decision.shas,
        "services": decision.services,
        "environment": decision.environment,
        "scores": None
        if risk is None
        else {
            "probability": risk.probability,
            "drivers": [d.model_dump() for d in risk.drivers[:10]],
        },
        "model": decision.model,
        "risk_error": context.risk_error,
        "policy_version": decision.policy_version,
        "llm": None if decision.llm is None else decision.llm.model_dump(),
        "findings": [f.model_dump(mode="json") for f in decision.findings],
        "decision": decision.model_dump(mode="json", exclude={"llm", "findings"}),
    }


def record(decision: Decision, context: ChangeContext, log: AuditLog) -> Recorded:
    decision = decision.model_copy(update={"decision_id": new_decision_id()})
    entry = log.append(decision_record(decision, context))
    return Recorded(decision, entry.hmac, entry.seq)


def decide_change(
    ref: ChangeRef,
    settings: Settings,
    policy: Policy,
    *,
    services: list[str] | None = None,
    environment: str = "production",
    now: datetime | None = None,
    scorer: RiskScorer | None = None,
    reviewer: Any = None,
    terraform_plan: Path | None = None,
    sarif: list[Path] | None = None,
    sarif_base: list[Path] | None = None,
) -> Recorded:
    """Assemble, decide, review (an `agents.reasoning` reviewer, when an LLM is configured), record. A
    `terraform_plan` file (`terraform show -json`) stands for the plan files the change may commit; `sarif`
    files (and the base's, `sarif_base`) for the findings stored with `awo ingest security`."""
    context = assemble(
        ref, settings, policy, now=now, services=services, environment=environment, scorer=scorer,
        terraform_plan=terraform_plan, sarif=sarif, sarif_base=sarif_base,
    )  # fmt: skip
    decision = decide(context, policy)
    if reviewer is not None:
        decision = reviewer.review(decision, context, policy)
    return record(decision, context, audit_log(settings))


def check_may_override(policy: Policy, who: str, *, unblock: bool = False) -> None:
    """Whether `who` may override a decision or approve a plan (`overrides.allowed`), or lift a block
    (`overrides.may_unblock`); `*` means anyone."""
    allowed = policy.overrides
    if "*" not in allowed.allowed and who not in allowed.allowed:
        raise OverrideRefused(
            f"{who!r} may not override or approve (policy overrides.allowed: {allowed.allowed})"
        )
    if unblock and "*" not in allowed.may_unblock and who not in allowed.may_unblock:
        raise OverrideRefused(
            f"{who!r} may not lift a block (policy overrides.may_unblock: {allowed.may_unblock})"
        )


def plan_gate_problem(plan_gate: Gate, decision_id: str | None, log: AuditLog) -> str | None:
    """Why a plan may not run with the gate it carries: a plan file is editable, so its gate is checked
    against the decision's gate in the audit log, overrides included."""
    if decision_id is None:
        return None
    history = log.find(decision_id)
    recorded = current_gate(history.decision, history.overrides)
    if gate_level(plan_gate) < gate_level(recorded):
        return f"the plan says gate {plan_gate}, but decision {decision_id} is {recorded} in the audit log"
    return None


def waived_findings(overrides: list[dict[str, Any]]) -> set[str]:
    """Finding ids waived by the overrides recorded so far."""
    return {f for o in overrides for f in o.get("waived", [])}


def override(
    log: AuditLog,
    policy: Policy,
    decision_id: str,
    gate: Gate | None,
    reason: str,
    who: str,
    waive: list[str] | None = None,
) -> dict[str, Any]:
    """Record a human override. Only identities the policy allows may override; lifting a `block` needs
    `may_unblock`. The reason is required. A gate below what an unwaived security finding requires is
    refused: the finding must be waived by id (`waive`), and the record keeps who waived which and why.
    Without a gate, the waivers set the gate the decision has without the waived findings."""
    waive = list(dict.fromkeys(waive or []))
    if gate is None and not waive:
        raise OverrideRefused("an override needs a gate or findings to waive")
    if gate is not None and gate not in GATES:
        raise OverrideRefused(f"unknown gate {gate!r}; one of {', '.join(GATES)}")
    if not reason.strip():
        raise OverrideRefused("an override needs a reason")
    check_may_override(policy, who)
    history = log.find(decision_id)
    rows: list[dict[str, Any]] = history.decision.get("findings") or []
    ids = [r["finding_id"] for r in rows]
    unknown = [w for w in waive if w not in ids]
    if unknown:
        raise OverrideRefused(
            f"decision {decision_id} has no finding {', '.join(unknown)} (its findings: "
            f"{', '.join(ids[:10]) or 'none'})"
        )
    waived = waived_findings(history.overrides) | set(waive)
    remaining = [r for r in rows if r.get("gate") and r["finding_id"] not in waived]
    floor = findings_floor(r["gate"] for r in remaining)
    current = current_gate(history.decision, history.overrides)
    if gate is None:
        d = history.decision["decision"]
        without: Gate = d.get("gate_without_findings") or d["gate"]
        target: Gate = without if floor is None or gate_level(without) >= gate_level(floor) else floor
        if gate_level(target) > gate_level(current):  # a waiver never tightens
            target = current
    else:
        target = gate
    if floor is not None and gate_level(target) < gate_level(floor):
        held = [r["finding_id"] for r in remaining if gate_level(r["gate"]) > gate_level(target)]
        raise OverrideRefused(
            f"finding(s) {', '.join(held)} require at least {floor}: waive each with --waive FINDING_ID"
        )
    lifts_block = current == "block" and gate_level(target) < gate_level("block")
    check_may_override(policy, who, unblock=lifts_block)
    entry = log.append(
        {
            "kind": "override",
            "decision_id": decision_id,
            "from_gate": current,
            "to_gate": target,
            "who": who,
            "reason": reason,
            "waived": waive,
        }
    )
    return {
        "decision_id": decision_id,
        "from_gate": current,
        "to_gate": target,
        "waived": waive,
        "audit_head": entry.hmac,
    }


def current_gate(decision_record: dict[str, Any], overrides: list[dict[str, Any]]) -> Gate:
    """The decision's gate after the overrides recorded so far."""
    gate: Gate = decision_record["decision"]["gate"]
    for o in overrides:
        gate = o["to_gate"]
    return gate


def explain_text(history: Any) -> str:
    """A readable account of a recorded decision (an audit DecisionHistory) and its overrides."""
    record = history.decision
    d = record["decision"]
    lines = [
        f"Decision {record['decision_id']} at {d['decided_at']} (policy {d['policy_version']})",
        f"Change: {d['repo']} {', '.join(s[:12] for s in d['shas'])} → {', '.join(d['services']) or '-'} "
        f"in {d['environment']}",
    ]
    if d["probability"] is None:
        lines.append(f"Risk: not scored. {d['fallback']}")
    else:
        model = d["model"] or {}
        lines.append(
            f"Risk: {d['band']} (calibrated probability {d['probability']:.3f}, model {model.get('name')} "
            f"v{model.get('version')})"
        )
    lines.append(f"Gate: {d['gate']}, because:")
    lines += [f"  - {r['message']}" for r in d["reasons"]]
    findings = record.get("findings") or []
    if findings:
        waived = waived_findings(history.overrides)
        lines.append(f"Security findings ({len(findings)}):")
        for f in findings:
            at = f"{f['path'] or '?'}:{f['line']}" if f["line"] else f["path"] or "?"
            place = "changed line" if f["on_changed_line"] else "not a changed line"
            effect = f"{f['gating_rule']}: at least {f['gate']}" if f["gate"] else "reported, not gating"
            if f["finding_id"] in waived:
                effect += " (waived)"
            lines.append(
                f"  - {f['finding_id']} {f['severity']} {f['tool']} {f['rule_id']} at {at} "
                f"[{f['status']}, {place}] → {effect}"
            )
    plan = d["test_plan"]
    lines.append(
        f"Tests: suites {', '.join(s['name'] + '@' + s['resource'] for s in plan['suites']) or 'none'}; "
        f"{len(plan['tests'])} tests, {plan['planned_s']:.0f}s of {plan['budget_s']:.0f}s"
    )
    rollout = d["rollout_plan"]
    lines.append(
        f"Rollout: {rollout['strategy']} from {rollout['deploy_at'] or 'no slot'}; order "
        f"{' → '.join(rollout['deploy_order']) or '-'}; "
        f"rollback {' → '.join(rollout['rollback_order']) or '-'}"
    )
    llm = record.get("llm")
    if llm:
        lines.append(f"LLM ({llm['model']}): {llm['fallback'] or llm['rationale']}")
        lines += [f"  accepted: {p}" for p in llm["accepted"]]
        lines += [f"  rejected: {p}" for p in llm["rejected"]]
    for o in history.overrides:
        waiver = f" (waived {', '.join(o['waived'])})" if o.get("waived") else ""
        lines.append(
            f"Override by {o['who']} at {o['recorded_at']}: {o['from_gate']} → {o['to_gate']}{waiver}: "
            f"{o['reason']}"
        )
    lines.append(f"Final gate: {current_gate(record, history.overrides)}")
    return "\n".join(lines)
