"""The demo's report: its data built from what the run produced (pure functions), the short account printed
in the terminal, and one self-contained HTML page (plots inline, every value escaped) written atomically."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.vocabulary import GATES

if TYPE_CHECKING:
    from agents.decision import Decision
    from agents.planner import Plan


@dataclass(frozen=True)
class StepTime:
    """One step of the demo and how long it took (wall clock, seconds)."""

    name: str
    seconds: float


@dataclass(frozen=True)
class ModelRow:
    """One trained model version and its held-out metrics."""

    kind: str
    version: str
    role: str  # what the demo did with it: "trained", "retrained", ...
    model_kind: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class DecisionRow:
    """A decision as the report shows it: the change, the gate and the reasons the policy gave."""

    sha: str
    services: list[str]
    gate: str
    band: str | None
    probability: float | None
    reasons: list[str]
    strategy: str


@dataclass(frozen=True)
class TimelineEntry:
    """One task of the rollout, in the order it ran (or was cancelled)."""

    task: str
    kind: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    detail: str


@dataclass(frozen=True)
class IntervalRow:
    """One analysis interval of the canary: the judge's verdict on the cumulative window, and the critical
    metric's rates (errors / requests) on each side."""

    task: str
    analysis: int  # the analysis run (one per canary pause), from 1
    interval: int  # from 1
    verdict: str
    score: float | None
    failed_critical: list[str]
    baseline_rate: float | None
    canary_rate: float | None
    p_value: float | None


@dataclass(frozen=True)
class RolloutSummary:
    """The canary's plan and how it ended."""

    plan_id: str
    goal: str
    gate: str
    approved_by: str | None
    outcome: str
    rollback_reason: str | None
    timeline: list[TimelineEntry]
    intervals: list[IntervalRow]
    replans: list[str]
    audit_kinds: dict[str, int]  # records of this rollout in the audit log, by kind
    feedback: list[str]  # the feedback rows written (deploy ids and incidents)


@dataclass(frozen=True)
class RetrainSummary:
    failed_before: int
    failed_after: int
    deployments_before: int
    deployments_after: int
    model: ModelRow
    promotion: str


@dataclass(frozen=True)
class FindingRow:
    """A security finding as the decision weighed it."""

    finding_id: str
    rule_id: str
    severity: str
    status: str
    where: str
    gate: str | None
    message: str


@dataclass(frozen=True)
class SecurityGateSummary:
    """The demo's insecure pull request: the scans of its base and head and the decision they led to."""

    branch: str
    sha: str
    base: str
    scanner: str  # the tool and its version
    scanned: str  # what was scanned in each checkout
    scan_s: float  # both checkouts and both scans
    decision_id: str
    gate: str
    reasons: list[str]  # every reason of the decision, the findings' first
    findings: list[FindingRow]


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo's report shows; `plots` maps a caption to a `data:` URI or an inline `<svg>`."""

    generated_at: datetime
    world: dict[str, Any]
    steps: list[StepTime]
    models: list[ModelRow]
    promotion: list[str]
    api: str
    gates: dict[str, int]
    decisions: list[DecisionRow]
    decisions_total: int
    rollout: RolloutSummary | None
    retrain: RetrainSummary | None
    plots: dict[str, str] = field(default_factory=dict)
    security: SecurityGateSummary | None = None
    security_skipped: str | None = None  # why the security step did not run


# --- building the report's data (pure) ------------------------------------------------------------------


def decision_rows(decisions: Iterable[Decision], top: int) -> list[DecisionRow]:
    """The `top` riskiest decisions (unscored ones last), each with the reasons' messages."""
    ranked = sorted(decisions, key=lambda d: -1.0 if d.probability is None else d.probability, reverse=True)
    return [
        DecisionRow(
            sha=d.shas[-1] if d.shas else "",
            services=list(d.services),
            gate=d.gate,
            band=d.band,
            probability=d.probability,
            reasons=[r.message for r in d.reasons],
            strategy=d.rollout_plan.strategy,
        )
        for d in ranked[:top]
    ]


def security_gate_summary(
    decision: Decision, branch: str, base: str, scanner: str, scanned: str, scan_s: float
) -> SecurityGateSummary:
    """The security step's decision as the report shows it: the security reasons first, the new findings
    first (as the decision orders them)."""
    reasons = sorted(decision.reasons, key=lambda r: r.kind != "security")
    return SecurityGateSummary(
        branch=branch,
        sha=decision.shas[-1] if decision.shas else "",
        base=base,
        scanner=scanner,
        scanned=scanned,
        scan_s=scan_s,
        decision_id=decision.decision_id or "",  # set once recorded
        gate=decision.gate,
        reasons=[r.message for r in reasons],
        findings=[
            FindingRow(
                finding_id=f.finding_id,
                rule_id=f.rule_id,
                severity=f.severity,
                status=f.status,
                where=f"{f.path}:{f.line}" if f.line else f.path,
                gate=f.gate,
                message=f.message,
            )
            for f in decision.findings
        ],
    )


def gate_counts(decisions: Iterable[Decision]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(GATES, 0)
    for d in decisions:
        counts[d.gate] = counts.get(d.gate, 0) + 1
    return counts


def timeline(plan: Plan) -> list[TimelineEntry]:
    """The plan's tasks in the order they started; tasks that never ran (cancelled) follow in plan order."""
    ran = sorted((t for t in plan.tasks if t.started_at is not None), key=lambda t: t.started_at)  # type: ignore[arg-type,return-value]
    rest = [t for t in plan.tasks if t.started_at is None]
    return [
        TimelineEntry(t.id, t.kind, t.status, t.started_at, t.finished_at, t.detail) for t in [*ran, *rest]
    ]


def _rate(result: Mapping[str, Any], side: str) -> float | None:
    value = result.get(side)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def analysis_intervals(records: Iterable[Mapping[str, Any]], metric: str = "error_rate") -> list[IntervalRow]:
    """Every interval of every analysis run in the `canary_analysis` audit records (agents.rollouts
    `audit_analyses`), with `metric`'s baseline and canary values and p-value."""
    rows = []
    for record in records:
        if record.get("kind") != "canary_analysis":
            continue
        for a, verdict in enumerate(record.get("verdicts", []), start=1):
            for i, interval in enumerate(verdict.get("intervals", []), start=1):
                found = [r for r in interval.get("results", []) if r.get("name") == metric]
                result = found[0] if found else {}
                p = result.get("p_value")
                rows.append(
                    IntervalRow(
                        task=str(record.get("task")),
                        analysis=a,
                        interval=i,
                        verdict=str(interval.get("verdict")),
                        score=interval.get("score"),
                        failed_critical=list(interval.get("failed_critical", [])),
                        baseline_rate=_rate(result, "baseline"),
                        canary_rate=_rate(result, "canary"),
                        p_value=None if p is None else float(p),
                    )
                )
    return rows


def rollout_summary(
    plan: Plan,
    outcome: str,
    records: Sequence[Mapping[str, Any]],
    feedback: list[str],
    approved_by: str | None,
) -> RolloutSummary:
    """The rollout from its final plan and its audit records (those with its plan id)."""
    mine = [r for r in records if r.get("plan_id") == plan.plan_id]
    kinds: dict[str, int] = {}
    for r in mine:
        kinds[str(r.get("kind"))] = kinds.get(str(r.get("kind")), 0) + 1
    failed = [t for t in plan.tasks if t.status == "failed"]
    return RolloutSummary(
        plan_id=plan.plan_id,
        goal=plan.goal.describe(),
        gate=plan.gate,
        approved_by=approved_by,
        outcome=outcome,
        rollback_reason=f"{failed[0].id}: {failed[0].detail}" if failed else None,
        timeline=timeline(plan),
        intervals=analysis_intervals(mine),
        replans=[
            f"{r.failed_task} failed → added {', '.join(r.added) or 'nothing'}; "
            f"cancelled {', '.join(r.cancelled) or 'nothing'}"
            for r in plan.replans
        ],
        audit_kinds=kinds,
        feedback=feedback,
    )


def summary(report: DemoReport) -> str:
    """The loop in one sentence: decisions, the rollout's end and why, what retraining learnt."""
    parts = [f"{report.decisions_total} decisions ({', '.join(f'{g} {n}' for g, n in report.gates.items())})"]
    if report.rollout is not None:
        r = report.rollout
        parts.append(
            f"canary of {r.goal}: {r.outcome}"
            + (f", rolled back by the judge ({r.rollback_reason})" if r.rollback_reason else "")
        )
    if report.retrain is not None:
        t = report.retrain
        parts.append(
            f"retraining saw {t.failed_after - t.failed_before:+d} failed deployments and registered "
            f"{t.model.kind} v{t.model.version}"
        )
    if report.security is not None:
        s = report.security
        new = sum(f.status == "new" for f in s.findings)
        parts.append(
            f"the insecure pull request {s.branch} gated {s.gate} on {new} new findings ({s.scanner})"
        )
    return "; ".join(parts) + "."


def terminal_lines(report: DemoReport) -> list[str]:
    """The short account printed at the end of `awo demo`."""
    lines = [
        "steps: "
        + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in report.steps)
        + f"; total {sum(s.seconds for s in report.steps):.1f}s",
        "models: "
        + "; ".join(
            f"{m.kind} v{m.version} ({m.role}, AUC {m.metrics.get('auc', float('nan')):.3f})"
            for m in report.models
        ),
    ]
    lines += [f"promotion gate: {p}" for p in report.promotion]
    lines.append(
        f"decisions: {report.decisions_total} via {report.api}: "
        + ", ".join(f"{g} {n}" for g, n in report.gates.items())
    )
    rollout = report.rollout
    if rollout is not None:
        lines.append(f"rollout {rollout.plan_id}: {rollout.goal}, gate {rollout.gate}: {rollout.outcome}")
        for entry in rollout.timeline:
            lines.append(f"  {entry.task:<22} {entry.status:<10} {entry.detail}")
        verdicts = ", ".join(f"{r.interval}:{r.verdict}" for r in rollout.intervals)
        lines.append(f"  judge per interval: {verdicts or 'no analysis'}")
        if rollout.rollback_reason:
            lines.append(f"  rolled back because {rollout.rollback_reason}")
    if report.retrain is not None:
        r = report.retrain
        lines.append(
            f"retrain: failed deployments {r.failed_before} → {r.failed_after} "
            f"(of {r.deployments_before} → {r.deployments_after}); "
            f"{r.model.kind} v{r.model.version}; {r.promotion}"
        )
    if report.security is not None:
        s = report.security
        lines.append(
            f"security gate: {s.branch} ({s.sha[:12]} on {s.base[:12]}) {s.gate} by {s.scanner} on "
            f"{s.scanned} of both checkouts ({s.scan_s:.1f}s); decision {s.decision_id}"
        )
        lines += [f"  {f.finding_id} {f.severity} {f.rule_id} at {f.where}: {f.status}" for f in s.findings]
    elif report.security_skipped:
        lines.append(f"security gate: skipped: {report.security_skipped}")
    return lines


# --- plots (matplotlib, inline) -------------------------------------------------------------------------


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def analysis_svg(intervals: Sequence[IntervalRow]) -> str:
    """The canary's and the baseline's error rate per interval of the analysis runs, failed intervals
    marked: an inline `<svg>` element."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    xs = list(range(1, len(intervals) + 1))
    base = [r.baseline_rate if r.baseline_rate is not None else float("nan") for r in intervals]
    canary = [r.canary_rate if r.canary_rate is not None else float("nan") for r in intervals]
    ax.plot(xs, [100 * v for v in base], "o-", label="baseline (stable)")
    ax.plot(xs, [100 * v for v in canary], "s-", color="tab:red", label="canary")
    failed = [(x, 100 * c) for x, c, r in zip(xs, canary, intervals, strict=True) if r.verdict == "fail"]
    if failed:
        ax.scatter(
            [x for x, _ in failed],
            [y for _, y in failed],
            s=160,
            facecolors="none",
            edgecolors="black",
            label="judged: fail",
        )
    ax.set_xticks(xs)
    ax.set(xlabel="analysis interval (cumulative window)", ylabel="error rate (%)", title="Canary analysis")
    ax.legend()
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


# --- HTML ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
vertical-align:top;text-align:left}th{background:#f3f3f3}.num{text-align:right}
.gate-block{color:#b00020;font-weight:bold}.gate-senior_review{color:#c45500;font-weight:bold}
.gate-standard{color:#1a5fb4}.gate-fast_track{color:#2e7d32}.fail{background:#fde0e0}.pass{background:#e3f4e3}
.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots figure{margin:0}figcaption{font-size:.9rem;color:#555}
.muted{color:#666}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: Sequence[str] = ()) -> str:
    """Cells in `rows` are HTML already (escaped by the caller); `cls` gives each row a class."""
    classes = list(cls)
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        attr = f' class="{_e(classes[i])}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{attr}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _plot(caption: str, plot: str) -> str:
    # an <svg> comes from matplotlib, drawn from our own numbers with fixed labels
    svg = plot.lstrip().startswith("<svg")
    body = plot if svg else f'<img alt="{_e(caption)}" src="{_e(plot)}">'
    return f"<figure>{body}<figcaption>{_e(caption)}</figcaption></figure>"


def render_html(report: DemoReport) -> str:
    """The report as one HTML page with no external resources."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>awo demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>awo demo: commit → score → decision → rollout → rollback → retraining</h1>",
        f'<p class="muted">generated {_e(report.generated_at.isoformat(timespec="seconds"))}; world: '
        + ", ".join(f"{_e(k)} {_e(v)}" for k, v in report.world.items())
        + "</p>",
        f"<p><b>{_e(summary(report))}</b></p>",
        "<h2>Steps</h2>",
        _table(
            ["step", "seconds"],
            [[_e(s.name), f'<span class="num">{s.seconds:.1f}</span>'] for s in report.steps]
            + [["<b>total</b>", f"<b>{sum(s.seconds for s in report.steps):.1f}</b>"]],
        ),
        "<h2>Models</h2>",
        _table(
            ["model", "version", "role", "AUC", "Brier", "Popt", "Recall@20% effort", "kind"],
            [
                [
                    _e(m.kind),
                    _e(m.version),
                    _e(m.role),
                    *(_num(m.metrics.get(k)) for k in ("auc", "brier", "popt", "recall_at_20_effort")),
                    _e(m.model_kind),
                ]
                for m in report.models
            ],
        ),
        "<ul>" + "".join(f"<li>promotion gate: {_e(p)}</li>" for p in report.promotion) + "</ul>",
    ]
    if report.plots:
        parts += [
            "<h2>Plots</h2>",
            '<div class="plots">' + "".join(_plot(c, p) for c, p in report.plots.items()) + "</div>",
        ]
    parts += [
        "<h2>Decisions</h2>",
        f"<p>{report.decisions_total} decisions made through {_e(report.api)}: "
        + ", ".join(f'<span class="gate-{_e(g)}">{_e(g)} {n}</span>' for g, n in report.gates.items())
        + f". The {len(report.decisions)} riskiest:</p>",
        '<table id="decisions"><thead><tr><th>commit</th><th>services</th><th>gate</th><th>band</th>'
        "<th>probability</th><th>rollout</th><th>reasons</th></tr></thead><tbody>"
        + "".join(
            f"<tr><td><code>{_e(d.sha[:12])}</code></td><td>{_e(', '.join(d.services) or '-')}</td>"
            f'<td class="gate-{_e(d.gate)}">{_e(d.gate)}</td><td>{_e(d.band or "unscored")}</td>'
            f'<td class="num">{_num(d.probability)}</td><td>{_e(d.strategy)}</td>'
            "<td><ul>" + "".join(f"<li>{_e(r)}</li>" for r in d.reasons) + "</ul></td></tr>"
            for d in report.decisions
        )
        + "</tbody></table>",
    ]
    rollout = report.rollout
    if rollout is not None:
        parts += [
            "<h2>Rollout</h2>",
            f"<p>{_e(rollout.goal)} (plan <code>{_e(rollout.plan_id)}</code>, gate {_e(rollout.gate)}"
            + (f", approved by {_e(rollout.approved_by)}" if rollout.approved_by else "")
            + f"): <b>{_e(rollout.outcome)}</b></p>",
        ]
        if rollout.rollback_reason:
            parts.append(f'<p class="fail">rolled back: {_e(rollout.rollback_reason)}</p>')
        parts.append(
            _table(
                ["task", "kind", "status", "started", "finished", "detail"],
                [
                    [
                        _e(t.task),
                        _e(t.kind),
                        _e(t.status),
                        _e(t.started_at.strftime("%H:%M:%S") if t.started_at else "-"),
                        _e(t.finished_at.strftime("%H:%M:%S") if t.finished_at else "-"),
                        _e(t.detail),
                    ]
                    for t in rollout.timeline
                ],
                ["fail" if t.status == "failed" else "" for t in rollout.timeline],
            )
        )
        parts += [f"<p>re-planned: {_e(r)}</p>" for r in rollout.replans]
        parts += [
            "<h3>Judge verdicts per interval</h3>",
            _table(
                [
                    "task",
                    "analysis",
                    "interval",
                    "verdict",
                    "score",
                    "failed critical",
                    "baseline errors",
                    "canary errors",
                    "p-value",
                ],
                [
                    [
                        _e(r.task),
                        str(r.analysis),
                        str(r.interval),
                        _e(r.verdict),
                        _num(r.score, ".0f"),
                        _e(", ".join(r.failed_critical) or "-"),
                        _num(None if r.baseline_rate is None else 100 * r.baseline_rate, ".2f") + "%",
                        _num(None if r.canary_rate is None else 100 * r.canary_rate, ".2f") + "%",
                        _num(r.p_value, ".2g"),
                    ]
                    for r in rollout.intervals
                ],
                [r.verdict if r.verdict in ("fail", "pass") else "" for r in rollout.intervals],
            ),
            "<p>recorded: audit log "
            + _e(", ".join(f"{k} {n}" for k, n in sorted(rollout.audit_kinds.items())))
            + "; feedback "
            + _e(", ".join(rollout.feedback) or "none")
            + "</p>",
        ]
    if report.retrain is not None:
        r = report.retrain
        parts += [
            "<h2>Retraining</h2>",
            f"<p>failed deployments (deploy-failure labels) {r.failed_before} → {r.failed_after} of "
            f"{r.deployments_before} → {r.deployments_after}; {_e(r.model.kind)} v{_e(r.model.version)} "
            f"AUC {_num(r.model.metrics.get('auc'))}; {_e(r.promotion)}</p>",
        ]
    parts += _security_html(report)
    parts.append("</body></html>")
    return "\n".join(parts)


def _security_html(report: DemoReport) -> list[str]:
    if report.security is None:
        skipped = report.security_skipped
        return ["<h2>Security gate</h2>", f"<p>skipped: {_e(skipped)}</p>"] if skipped else []
    s = report.security
    return [
        "<h2>Security gate</h2>",
        f"<p>pull request <code>{_e(s.branch)}</code> (<code>{_e(s.sha[:12])}</code> on "
        f"<code>{_e(s.base[:12])}</code>), {_e(s.scanner)} on {_e(s.scanned)} of the base and the head "
        f"({s.scan_s:.1f} s): "
        f'<b class="gate-{_e(s.gate)}">{_e(s.gate)}</b>, decision <code>{_e(s.decision_id)}</code></p>',
        '<ul id="security-reasons">' + "".join(f"<li>{_e(r)}</li>" for r in s.reasons) + "</ul>",
        _table(
            ["finding", "rule", "severity", "status", "where", "gate", "message"],
            [
                [
                    f"<code>{_e(f.finding_id)}</code>",
                    _e(f.rule_id),
                    _e(f.severity),
                    _e(f.status),
                    _e(f.where),
                    _e(f.gate or "reported"),
                    _e(f.message),
                ]
                for f in s.findings
            ],
            ["fail" if f.gate == "block" else "" for f in s.findings],
        ),
    ]


def write_report(path: Path, page: str) -> Path:
    """Write the page atomically (a reader never sees half a report)."""
    from features.tables import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path
