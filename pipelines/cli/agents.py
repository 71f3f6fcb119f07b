"""`awo decide`, `awo explain`, `awo override`, `awo audit verify`, `awo policy`: the decision engine's
commands, and the security-findings ingest behind `awo ingest security`. `awo decide` exits 0 (proceed),
3 (senior review) or 4 (block) so a CI step can act on it."""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from features.errors import AwoError
from pipelines.cli.models import benchmark_app
from pipelines.cli.root import app, console, err_console, load_settings, styled

if TYPE_CHECKING:
    from agents.engine import Recorded
    from agents.security import StoredFindings

audit_app = typer.Typer(help="The tamper-evident decision audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
policy_app = typer.Typer(help="The decision policy.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


class GateChoice(StrEnum):
    fast_track = "fast_track"
    standard = "standard"
    senior_review = "senior_review"
    block = "block"


PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="policy YAML (default: AWO_POLICY, else the packaged default)")
]
GATE_STYLE = {
    "fast_track": "bold green",
    "standard": "green",
    "senior_review": "bold yellow",
    "block": "bold red",
}


def _reviewer(settings):
    if not settings.llm_base_url:
        return None
    from agents.reasoning import LlmReviewer

    return LlmReviewer.from_settings(settings)


def _ensure_mined(repo: Path, name: str | None, settings) -> str:
    """The repository's name; mines it first (incrementally) when it has never been mined, so an unmined
    change is measured against its history."""
    from features.mining.gitlog import Repository
    from features.tables import COMMITS_FILE

    repo_name = name or Repository(repo).name
    if not (settings.repo_data_dir(repo_name) / COMMITS_FILE).exists():
        from pipelines.cli.mining import MiningProgress, print_mine_summary
        from pipelines.mine import mine_repository

        with MiningProgress() as progress:
            result = mine_repository(repo, settings, None, None, 1, repo_name, progress)
        print_mine_summary(result, err_console)  # stdout is the decision's (`--json`)
    return repo_name


@app.command()
def decide(
    repo: Annotated[Path, typer.Option("--repo", help="the git repository", exists=True, file_okay=False)],
    sha: Annotated[str | None, typer.Option(help="one commit")] = None,
    base: Annotated[str | None, typer.Option(help="the target branch or commit of a range")] = None,
    head: Annotated[str | None, typer.Option(help="the head of the range (a pull request's branch)")] = None,
    service: Annotated[
        list[str] | None, typer.Option(help="services shipped (default: from the files)")
    ] = None,
    environment: Annotated[str, typer.Option(help="target environment")] = "production",
    name: Annotated[str | None, typer.Option(help="repository name (default: the folder name)")] = None,
    policy: PolicyOption = None,
    now: Annotated[datetime | None, typer.Option(help="decide as of this time (default: now)")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the decision as JSON (docs/schemas)")
    ] = False,
    terraform_plan: Annotated[
        Path | None,
        typer.Option(
            "--terraform-plan",
            help="the change's plan as `terraform show -json` writes it (default: a *.tfplan.json or "
            "terraform-plan.json the change commits)",
            dir_okay=False,
        ),
    ] = None,
    sarif: Annotated[
        list[Path] | None,
        typer.Option(
            "--sarif",
            help="security findings of the change's head as SARIF 2.1.0 (repeatable; default: those stored "
            "with `awo ingest security` for the head commit)",
            dir_okay=False,
        ),
    ] = None,
    sarif_base: Annotated[
        list[Path] | None,
        typer.Option(
            "--sarif-base",
            help="the base's findings, to tell new ones (repeatable; default: those stored for the base)",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Decide how a change is gated, tested and shipped. Exit 0: proceed; 3: senior review; 4: block."""
    from agents.assemble import ChangeRef
    from agents.engine import decide_change, policy_of
    from agents.security import read_sarif
    from agents.terraform import read_plan

    settings = load_settings()
    rules = policy_of(settings, policy)
    ref = ChangeRef(repo_path=repo, repo="", sha=sha, base=base, head=head)  # checks the options first
    if terraform_plan is not None:
        read_plan(terraform_plan)  # a bad plan file fails before any mining
    for scan in [*(sarif or []), *(sarif_base or [])]:
        read_sarif(scan)  # a malformed SARIF file fails before any mining, and nothing is recorded
    repo_name = _ensure_mined(repo, name, settings)
    ref = ChangeRef(repo_path=repo, repo=repo_name, sha=sha, base=base, head=head)
    recorded = decide_change(
        ref,
        settings,
        rules,
        services=service,
        environment=environment,
        now=now,
        reviewer=_reviewer(settings),
        terraform_plan=terraform_plan,
        sarif=sarif,
        sarif_base=sarif_base,
    )
    if as_json:
        body = recorded.decision.model_dump(mode="json")
        body["audit_head"] = recorded.audit_head
        console.print_json(json.dumps(body))
    else:
        print_decision(recorded)
    raise typer.Exit(recorded.decision.exit_code)


def print_decision(recorded: Recorded) -> None:
    d = recorded.decision
    score = "unscored" if d.probability is None else f"{d.band} risk {d.probability:.3f}"
    console.print(
        styled(
            d.gate.upper().replace("_", " "),
            GATE_STYLE[d.gate],
            f"  {d.repo} {', '.join(s[:12] for s in d.shas[:3])}"
            f"{' …' if len(d.shas) > 3 else ''} → {', '.join(d.services) or '(no service)'} "
            f"in {d.environment}; {score}",
        ),
        highlight=False,
    )
    for reason in d.reasons:
        console.print(f"  - [{reason.kind}] {reason.message}", highlight=False)
    plan = d.test_plan
    suites = ", ".join(f"{s.name}@{s.resource}{'*' if s.mandatory else ''}" for s in plan.suites) or "none"
    console.print(
        f"tests: {suites}; {len(plan.tests)} tests planned, "
        f"{plan.planned_s:.0f}s of a {plan.budget_s:.0f}s budget, "
        f"{plan.skipped_over_budget} left out",
        highlight=False,
    )
    for check in plan.checks:
        command = f" `{' '.join(check.command)}`" if check.command else ""
        console.print(
            f"  check {check.name}@{check.resource}{' (blocking)' if check.blocking else ''}{command}: "
            f"{'; '.join(check.why)}",
            highlight=False,
        )
    for t in plan.tests[:5]:
        flaky = f", flaky {t.flake_rate:.0%} → {t.retries} retries, not blocking" if not t.blocking else ""
        console.print(
            f"  {t.order}. {t.suite}::{t.test_id} (p_fail {t.p_fail:.2f}, {t.duration_s:.0f}s{flaky})",
            highlight=False,
        )
    r = d.rollout_plan
    steps = " → ".join(
        f"{s.set_weight}%" if s.set_weight is not None else f"pause {s.pause}" for s in r.steps
    )
    when = r.deploy_at.strftime("%Y-%m-%d %H:%M UTC") if r.deploy_at else "no slot"
    console.print(
        f"rollout: {r.strategy}{' ' + steps if steps else ''}; "
        f"analysis {', '.join(a.name for a in r.analysis) or 'none'}; "
        f"bake {r.bake_time_s // 60} min; order {' → '.join(r.deploy_order) or '-'}; at {when}",
        highlight=False,
    )
    if d.llm is not None:
        llm = d.llm
        state = (
            f"fallback: {llm.fallback}"
            if llm.fallback
            else f"{len(llm.accepted)} accepted, {len(llm.rejected)} rejected"
        )
        console.print(f"llm ({llm.model}): {state}", highlight=False)
    console.print(
        f"decision {d.decision_id} (policy {d.policy_version}); audit head {recorded.audit_head}",
        highlight=False,
    )


@app.command()
def explain(decision_id: Annotated[str, typer.Argument(help="the decision's id (a ULID)")]) -> None:
    """A readable account of a recorded decision and its overrides."""
    from agents.engine import audit_log, explain_text

    settings = load_settings()
    console.print(explain_text(audit_log(settings).find(decision_id)), highlight=False)


@app.command()
def override(
    decision_id: Annotated[str, typer.Argument(help="the decision's id")],
    reason: Annotated[str, typer.Option(help="why (recorded)")],
    gate: Annotated[
        GateChoice | None, typer.Option(help="the gate to set (default with --waive: what the waivers leave)")
    ] = None,
    waive: Annotated[
        list[str] | None,
        typer.Option("--waive", help="a security finding's id to waive (repeatable; see `awo explain`)"),
    ] = None,
    policy: PolicyOption = None,
) -> None:
    """Record a human override of a decision's gate, or waivers of its security findings; only identities
    the policy names may, and a gate below an unwaived finding's is refused."""
    from agents.engine import audit_log, policy_of
    from agents.engine import override as record_override

    settings = load_settings()
    who = getpass.getuser()  # who runs the command: not a name typed on it
    done = record_override(
        audit_log(settings),
        policy_of(settings, policy),
        decision_id,
        None if gate is None else gate.value,
        reason,
        who,
        waive=waive,
    )
    waived = f" waiving {', '.join(done['waived'])}" if done["waived"] else ""
    console.print(
        f"decision {decision_id}: {done['from_gate']} → {done['to_gate']} by {who}{waived}; "
        f"audit head {done['audit_head']}",
        highlight=False,
    )


def ingest_security(file: Path, sha: str, data: Path) -> tuple[StoredFindings, dict[str, int]]:
    """`awo ingest security FILE --sha S --data DIR`: validate a SARIF 2.1.0 file (a malformed one stores
    nothing) and keep its findings for commit S in the repository's data directory, replacing S's findings
    from the same tools. Returns what was stored and the count per severity under the policy in force."""
    from agents.engine import policy_of
    from agents.policy import SEVERITIES
    from agents.security import checked_sha, read_sarif, severity_of, store_findings

    checked_sha(sha)
    report = read_sarif(file)
    security = policy_of(load_settings()).security
    severities = [severity_of(f, security) for f in report.findings]
    counts: dict[str, int] = {s: severities.count(s) for s in reversed(SEVERITIES)}
    return store_findings(data, sha, report), counts


def print_security_ingest_summary(stored: StoredFindings, counts: dict[str, int]) -> None:
    by_severity = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    console.print(
        f"security findings {stored.source} for {stored.sha[:12]}: {stored.stored} stored "
        f"({', '.join(stored.tools) or 'no tool'}; {by_severity}), {stored.replaced} replaced "
        f"→ {stored.table}",
        highlight=False,
    )


@audit_app.command("verify")
def audit_verify(
    head: Annotated[
        str | None, typer.Option(help="the audit head you kept (printed with each decision)")
    ] = None,
) -> None:
    """Check every record's HMAC chain and the head; exit 1 when the log was changed."""
    from agents.engine import audit_log

    settings = load_settings()
    report = audit_log(settings).verify(head)
    if report.ok:
        console.print(f"audit log ok: {report.records} records; head {report.head}", highlight=False)
        return
    err_console.print(styled("audit log FAILED:", "bold red", f" {report.problem}"), highlight=False)
    raise typer.Exit(1)


@audit_app.command("repair")
def audit_repair() -> None:
    """Remove a line torn by a crash mid-write from the end of the log (kept aside in a side file); refuses
    a log whose complete lines do not verify."""
    from agents.engine import audit_log

    console.print(audit_log(load_settings()).repair().describe(), highlight=False)


@policy_app.command("check")
def policy_check(path: Annotated[Path, typer.Argument(help="a policy YAML file")]) -> None:
    """Validate a policy file; errors name the field."""
    from agents.policy import load_policy

    rules = load_policy(path)
    console.print(
        f"policy {path}: version {rules.version}; {len(rules.rules)} rules, {len(rules.suites)} suites, "
        f"on_error {rules.on_error}",
        highlight=False,
    )


agent_app = typer.Typer(help="The agents service.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")


@agent_app.command("serve")
def agent_serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8100,
) -> None:
    """Start the agents service (decisions, explanations, overrides, audit check, and the git hosts' webhooks
    for those with a secret) with uvicorn."""
    import uvicorn

    from agents.service import create_agent_app
    from agents.webhooks import configured_hosts

    settings = load_settings()
    if not settings.api_tokens:
        err_console.print(
            styled("warning:", "yellow", " no API tokens configured: every call will get 401 (`awo token`)")
        )
    hosts = configured_hosts(settings)
    handler = None
    if hosts:
        from pipelines.webhook_job import webhook_handler

        handler = webhook_handler(settings)
        console.print(
            f"webhooks: {', '.join(f'/webhooks/{h}' for h in hosts)} for {len(settings.repositories)} "
            f"repositories; queue {settings.data_dir / 'webhooks.db'}",
            highlight=False,
        )
    console.print(f"agents service on http://{host}:{port}", highlight=False)
    uvicorn.run(
        create_agent_app(settings, webhook_handler=handler), host=host, port=port, log_level="warning"
    )


@app.command()
def plan(
    goal: Annotated[str, typer.Argument(help='e.g. "ship 3f2a9c1 of payments to production within 4h"')],
    out: Annotated[Path, typer.Option("--out", help="the plan file to write (YAML)")],
    repo: Annotated[
        Path | None, typer.Option(help="decide on the goal's commit in this repository first")
    ] = None,
    name: Annotated[str | None, typer.Option(help="repository name (default: the folder name)")] = None,
    policy: PolicyOption = None,
) -> None:
    """Turn a goal into a checked task graph (analyse → test → staging → canary → promote → watch)."""
    from agents.engine import policy_of
    from agents.goals import parse_goal
    from agents.planner import plan_goal, save_plan

    settings = load_settings()
    rules = policy_of(settings, policy)
    parsed = parse_goal(goal)
    decision = None
    if repo is not None and parsed.ref is not None:
        from agents.assemble import ChangeRef
        from agents.engine import decide_change

        repo_name = _ensure_mined(repo, name, settings)
        ref = ChangeRef(repo_path=repo, repo=repo_name, sha=parsed.ref)
        recorded = decide_change(
            ref, settings, rules, services=parsed.services, environment=parsed.environment
        )
        decision = recorded.decision
        print_decision(recorded)
    made = plan_goal(parsed, decision, rules)
    reviewer = _reviewer(settings)
    if reviewer is not None:  # an LLM may propose the graph; the planner checks and completes it
        from agents.planner import complete_plan
        from agents.reasoning import propose_plan

        proposed, said = propose_plan(reviewer, goal, decision)
        console.print(f"llm: {said}", highlight=False)
        if proposed is not None:
            made = complete_plan(proposed, parsed, decision, rules)
    save_plan(made, out)
    console.print(
        f"plan {made.plan_id}: {parsed.describe()}: {len(made.tasks)} tasks, gate {made.gate}, "
        f"strategy {made.strategy or '-'}, about {made.estimated_s / 3600:.1f} h → {out}",
        highlight=False,
    )
    for task in made.tasks:
        after = f"  after {', '.join(task.depends_on)}" if task.depends_on else ""
        console.print(f"  {task.id}  {task.describe()}{after}", highlight=False)
    for note in made.notes:
        console.print(f"note: {note}", highlight=False)


@app.command()
def run(
    plan_file: Annotated[
        Path, typer.Argument(help="a plan written by `awo plan`", exists=True, dir_okay=False)
    ],
    approve: Annotated[
        bool,
        typer.Option("--approve", help="approve a senior_review plan as yourself (if the policy allows)"),
    ] = False,
    fail: Annotated[
        list[str] | None, typer.Option(help="dry run: make TASK_ID fail, as TASK_ID=REASON (repeatable)")
    ] = None,
    policy: PolicyOption = None,
) -> None:
    """Execute a plan step by step against the dry-run executor; resumes where a previous run stopped.
    Exit 0: succeeded; 4: blocked; 1: failed."""
    from agents.engine import OverrideRefused, audit_log, check_may_override, plan_gate_problem, policy_of
    from agents.executor import DryRunExecutor
    from agents.planner import load_plan
    from agents.run import run_plan

    settings = load_settings()
    rules = policy_of(settings, policy)
    log = audit_log(settings)
    plan_doc = load_plan(plan_file)
    if problem := plan_gate_problem(plan_doc.gate, plan_doc.decision_id, log):
        raise OverrideRefused(problem)
    approved_by = None
    if approve:
        approved_by = getpass.getuser()  # who runs the command: not a name typed on it
        check_may_override(rules, approved_by)
    failures = {}
    for item in fail or []:
        task_id, sep, reason = item.partition("=")
        if not sep or not task_id or not reason:
            raise AwoError(f"--fail {item!r}: expected TASK_ID=REASON")
        failures[task_id] = reason
    report = run_plan(
        plan_doc,
        DryRunExecutor(fail=failures),
        on_event=lambda event: console.print(event.message, highlight=False),
        audit=log,
        state_path=plan_file,
        feedback_root=settings.data_dir,
        approved_by=approved_by,
    )
    for line in report.summary_lines():
        console.print(line, highlight=False)
    raise typer.Exit(report.exit_code)


@benchmark_app.command("tests")
def benchmark_tests(
    dataset: Annotated[
        Path, typer.Option(help="a CI history in the RETECS format (';'-separated, gzip or not)", exists=True)
    ],
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON")] = None,
) -> None:
    """Test allocation replayed cycle by cycle (strictly online) beside random, recent-failures-first and
    an oracle: APFD, NAPFD with a 50% budget, time to the first failure."""
    from agents.test_replay import run_test_benchmark

    run_test_benchmark(dataset, out)


@benchmark_app.command("gate")
def benchmark_gate(
    dataset: Annotated[
        Path, typer.Option(help="a folder of JIT CSVs in the ISSTA'21 schema", exists=True, file_okay=False)
    ],
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON")] = None,
) -> None:
    """The risk gate replayed on each project's last 20% of commits, beside a lines-changed gate at the
    same shares: fast-tracked share and its defect rate over the base rate, defects gated."""
    from agents.gate_replay import print_gate_table, run_gate_benchmark

    print_gate_table(run_gate_benchmark(dataset, out), console)


@app.command()
def judge(
    baseline: Annotated[Path, typer.Option(help="baseline metrics: CSV timestamp,metric,value", exists=True)],
    canary: Annotated[Path, typer.Option(help="canary metrics, same format", exists=True)],
    template: Annotated[Path | None, typer.Option(help="analysis template YAML (default: packaged)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Judge a canary against its baseline from metric files (Kayenta's judge: Fisher's exact test on the
    counts of rate metrics, Mann-Whitney on samples of the others; Argo's AnalysisRun limits). Count rows
    (e.g. `errors`, `requests`) name a rate metric's numerator and denominator. Exit 0: pass; 3: marginal
    or inconclusive; 4: fail."""
    from agents.judge import judge_files

    result = judge_files(baseline, canary, template)
    if as_json:
        console.print_json(json.dumps(result))
    else:
        score = "no score" if result["score"] is None else f"score {result['score']:.0f}"
        console.print(
            f"{result['verdict'].upper()}: {result['action']} after {result['intervals']} intervals, "
            f"{score}; {result['why']}",
            highlight=False,
        )
        for m in result["metrics"]:
            p = "-" if m["p_value"] is None else f"{m['p_value']:.3g}"
            test = m.get("test") or "-"
            console.print(
                f"  {m['metric']}: {m['classification']} ({test} p {p}, n {m['n']}) {m['reason']}",
                highlight=False,
            )
    raise typer.Exit(result["exit_code"])
