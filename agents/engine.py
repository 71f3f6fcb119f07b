"""One decision, end to end, for the CLI and the agents service alike: gather the context, decide, let the
LLM (when configured) review it within the policy's bounds, and record it in the audit log. Also the
human side: overrides (only by those the policy names) and a readable account of a recorded decision."""

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
    prompt and response with the guardrails that fired, and the final decision."""
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
        "decision": decision.model_dump(mode="json", exclude={"llm"}),
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
) -> Recorded:
    """Assemble, decide, review (an `agents.reasoning` reviewer, when an LLM is configured), record. A
    `terraform_plan` file (`terraform show -json`) stands for the plan files the change may commit."""
    context = assemble(
        ref, settings, policy, now=now, services=services, environment=environment, scorer=scorer,
        terraform_plan=terraform_plan,
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


def override(
    log: AuditLog, policy: Policy, decision_id: str, gate: Gate, reason: str, who: str
) -> dict[str, Any]:
    """Record a human override. Only identities the policy allows may override; lifting a `block` needs
    `may_unblock`. The reason is required."""
    if gate not in GATES:
        raise OverrideRefused(f"unknown gate {gate!r}; one of {', '.join(GATES)}")
    if not reason.strip():
        raise OverrideRefused("an override needs a reason")
    check_may_override(policy, who)
    history = log.find(decision_id)
    current = current_gate(history.decision, history.overrides)
    lifts_block = current == "block" and gate_level(gate) < gate_level("block")
    check_may_override(policy, who, unblock=lifts_block)
    entry = log.append(
        {
            "kind": "override",
            "decision_id": decision_id,
            "from_gate": current,
            "to_gate": gate,
            "who": who,
            "reason": reason,
        }
    )
    return {"decision_id": decision_id, "from_gate": current, "to_gate": gate, "audit_head": entry.hmac}


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
        lines.append(
            f"Override by {o['who']} at {o['recorded_at']}: {o['from_gate']} → {o['to_gate']}: {o['reason']}"
        )
    lines.append(f"Final gate: {current_gate(record, history.overrides)}")
    return "\n".join(lines)
