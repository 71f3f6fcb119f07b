"""`awo demo-world` (a repository with planted defects and known truth) and `awo demo`: the whole loop on it,
step by step, with numbers: mine, label, train, promote, decide through the risk API, a canary judged on
metrics with an error spike, its automatic rollback, retraining on the outcome, the security gate blocking an
insecure pull request on a real bandit scan, and an HTML report."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.cli.mining import (
    MiningProgress,
    failed_fixes_note,
    print_ingest_summary,
    print_label_quality,
    print_mine_summary,
)
from pipelines.cli.root import app, console, load_settings, styled
from pipelines.flow import StageListener

if TYPE_CHECKING:
    from feast import FeatureStore

    from agents.assemble import RiskScorer
    from agents.decision import Decision
    from agents.engine import Recorded
    from agents.executor import DryRunExecutor, TaskResult
    from agents.judge import AnalysisTemplate
    from agents.monitor import CanaryAnalyst
    from agents.planner import Task
    from agents.policy import Policy
    from agents.rollouts import RolloutRun
    from features.settings import Settings
    from models.risk_model import ModelConfig
    from pipelines.demo_world import WorldSummary
    from pipelines.features_job import BuildResult
    from pipelines.ingest import IngestResult
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult
    from pipelines.report import ModelRow, RetrainSummary, SecurityGateSummary, StepTime
    from pipelines.train import TrainResult


@app.command("demo-world")
def demo_world(
    out: Annotated[Path, typer.Option(help="folder to create the demo repository in")],
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same world")] = 7,
    commits: Annotated[int, typer.Option(min=50, max=200_000, help="number of commits")] = 2000,
) -> None:
    """Generate a git repository with known planted defects (ground truth in truth.parquet)."""
    from pipelines.demo_world import generate_world

    world = generate_world(out, seed=seed, n_commits=commits)
    console.print(
        f"demo world: {world.commits} commits by {world.authors} authors over {world.days} days "
        f"in {world.repo}\n"
        f"  planted defects in {world.bug_inducing} commits, fixed by {world.fix_commits} commits "
        f"({world.unfixed} never fixed); truth: {world.truth_path}",
        highlight=False,
    )


class _StepClock:
    """When each demo step ended: a step lasts from the previous step's end to its own. Marking a step
    again moves its end (ingestion ends with its last file)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ends: dict[str, float] = {}

    def mark(self, step: str) -> None:
        self.ends[step] = time.perf_counter()

    def steps(self) -> list[StepTime]:
        from pipelines.report import StepTime

        out, previous = [], self.started
        for name, end in self.ends.items():
            out.append(StepTime(name, end - previous))
            previous = end
        return out


class _DemoSteps(StageListener):
    """Prints steps 2-4 of the demo as the flow finishes them; step 5 adds a training set and an online
    lookup to what the flow built."""

    def __init__(
        self, world: WorldSummary, tables: Path, progress: MiningProgress, clock: _StepClock
    ) -> None:
        self.world, self.tables, self.progress, self.clock = world, tables, progress, clock
        self.ingested_any = False

    def mined(self, result: MineResult) -> None:
        self.progress.stop()
        self.clock.mark("mine")
        console.print(styled("2. mine", "bold", ":"), end=" ")
        print_mine_summary(result)
        _print_table_overview(self.tables)

    def labelled(self, result: LabelResult) -> None:
        self.clock.mark("label")
        console.print(
            styled(
                "3. label",
                "bold",
                f" (R-SZZ): {result.bug_inducing} bug-inducing, {result.clean} clean, "
                f"{result.unknown} not mature yet, from {result.fixes} fix commits"
                f"{failed_fixes_note(result)}",
            ),
            highlight=False,
        )
        print_label_quality(self.tables, self.world.truth_path)

    def ingested(self, result: IngestResult) -> None:
        if not self.ingested_any:
            console.print(styled("4. ingest", "bold", " delivery history:"))
            self.ingested_any = True
        print_ingest_summary(result)
        self.clock.mark("ingest")

    def features_ready(
        self, built: BuildResult, applied: dict[str, int], materialized: dict[str, Any]
    ) -> None:
        self.built, self.applied = built, applied


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="random seed of the demo world and of its canary's metrics")] = 7,
    commits: Annotated[int, typer.Option(min=50, help="commits in the demo world")] = 2000,
    top: Annotated[int, typer.Option(min=1, max=1000, help="decisions listed in the HTML report")] = 25,
    quick: Annotated[
        bool, typer.Option("--quick", help="smaller models (120 trees at learning rate 0.08): a fast run")
    ] = False,
) -> None:
    """The whole loop on the embedded demo world: generate, mine, label, ingest, train, promote, decide
    through the risk API, roll the riskiest shippable change out as a canary with an error spike, roll it
    back, retrain both models on the outcome, scan the insecure pull request's base and head with bandit and
    decide on it with the findings; then a report in the terminal and in `<data root>/demo/report.html`."""
    from agents.assemble import HttpScorer
    from agents.engine import policy_of
    from models.risk_model import ModelConfig
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    settings = load_settings()
    config = ModelConfig(n_estimators=120, learning_rate=0.08) if quick else None
    root = settings.data_dir / "demo"
    tables = root / "tables"
    clock = _StepClock()
    world = generate_world(root / "world", seed=seed, n_commits=commits, overwrite=True)
    shutil.rmtree(tables, ignore_errors=True)  # the demo always starts from scratch
    console.print(
        styled(
            "1. demo world",
            "bold",
            f": {world.commits} commits, {world.authors} authors, {world.days} days, "
            f"{world.bug_inducing} defect-inducing commits ({world.unfixed} never fixed)",
        ),
        highlight=False,
    )
    clock.mark("world")
    with MiningProgress() as progress:
        steps = _DemoSteps(world, tables, progress, clock)
        store = prepare(
            world.repo, settings, tables, name="demo", delivery=world.repo.parent,
            on_progress=progress, listener=steps,
        )  # fmt: skip
    _demo_feature_store(store, steps, tables)
    clock.mark("feature store")
    models = _demo_models(settings, tables, config)
    clock.mark("train")
    promotion = _demo_promote(settings, tables)
    clock.mark("promote")
    policy = policy_of(settings)
    with risk_api(settings, root / "risk-api.log") as api:
        console.print(
            styled(
                "8. risk API",
                "bold",
                f": `awo serve` as process {api.pid} on {api.url}, ready in {api.ready_s:.1f} s, "
                "with a token made for this run (scope risk:read)",
            ),
            highlight=False,
        )
        clock.mark("risk API")
        recorded = _demo_decisions(settings, world.repo, tables, HttpScorer(api.url, api.token), api.url)
        clock.mark("decisions")
        decisions = [r.decision for r in recorded]
        canary = _demo_canary(settings, policy, decisions, root, seed)
        clock.mark("canary")
        records, feedback = _demo_rollback_recorded(settings, canary.run)
        clock.mark("rollback recorded")
        retrained, retrained_change_risk = _demo_retrain(settings, world.repo, tables, config)
        clock.mark("retrain")
        security = _demo_security(
            settings, world, tables, HttpScorer(api.url, api.token), root / "security", bandit_command()
        )
        clock.mark("security gate")
    models.append(retrained_change_risk)  # the report adds retrained deploy-failure's row after it
    _demo_report(settings, root, world, seed, top, clock, models, promotion, api.url, decisions,
                 canary, records, feedback, retrained, security)  # fmt: skip


def _demo_report(
    settings: Settings,
    root: Path,
    world: WorldSummary,
    seed: int,
    top: int,
    clock: _StepClock,
    models: list[ModelRow],
    promotion: list[str],
    url: str,
    decisions: list[Decision],
    canary: _Canary,
    records: list[dict[str, Any]],
    feedback: list[str],
    retrained: RetrainSummary,
    security: SecurityGateSummary | str,
) -> None:
    """The terminal report and `<root>/report.html`, from what the steps returned (`security`: the security
    step's summary, or why it was skipped)."""
    from datetime import UTC, datetime

    from pipelines.report import (
        DemoReport,
        analysis_svg,
        decision_rows,
        gate_counts,
        render_html,
        rollout_summary,
        terminal_lines,
        write_report,
    )

    plan = canary.run.report.plan
    rollout = rollout_summary(plan, canary.run.report.outcome, records, feedback, canary.approved_by)
    plots = _champion_plots(settings)
    if rollout.intervals:
        plots["canary analysis: error rate per interval (the judge's failed interval circled)"] = (
            analysis_svg(rollout.intervals)
        )
    clock.mark("report")
    report = DemoReport(
        generated_at=datetime.now(UTC),
        world={
            "commits": world.commits,
            "authors": world.authors,
            "days": world.days,
            "defect-inducing commits": world.bug_inducing,
            "seed": seed,
        },
        steps=clock.steps(),
        models=[*models, retrained.model],
        promotion=promotion,
        api=f"the risk API at {url}",
        gates=gate_counts(decisions),
        decisions=decision_rows(decisions, top),
        decisions_total=len(decisions),
        rollout=rollout,
        retrain=retrained,
        plots=plots,
        security=None if isinstance(security, str) else security,
        security_skipped=security if isinstance(security, str) else None,
    )
    path = write_report(root / "report.html", render_html(report))
    console.print(styled("report", "bold", ":"))
    for line in terminal_lines(report):
        console.print("  " + line, highlight=False, soft_wrap=True)
    console.print(f"  HTML report: {path.resolve().as_uri()}", highlight=False)
    _print_next_steps()


def _print_next_steps() -> None:
    from features.settings import PROJECT_ROOT

    notebooks = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
    console.print(
        "next: `awo mlflow-ui` (MLflow UI: runs, metrics, plots and the model registry at "
        "http://127.0.0.1:5000); `awo features ui` (Feast's UI on the feature registry); "
        + (
            f"the {len(notebooks)} notebooks in notebooks/ run top to bottom on this world: "
            "`.venv/bin/jupyter execute notebooks/NAME.ipynb` (or open them in an editor with Jupyter)"
            if notebooks
            else "the analyst notebooks (notebooks/) are not in this checkout"
        ),
        highlight=False,
    )


def _demo_feature_store(store: FeatureStore, steps: _DemoSteps, tables: Path) -> None:
    from features.store import online_features, training_set
    from pipelines.label import load_commits

    commits = load_commits(tables)
    entities = commits[["repo", "sha", "committed_at"]].rename(columns={"committed_at": "event_timestamp"})
    train = training_set(store, entities, "change_risk_v1")
    latest = [{"repo": "demo", "sha": sha} for sha in commits["sha"].tail(100)]
    online_features(store, "change_risk_v1", latest[:1])  # warm-up: the first lookup opens the store
    started = time.perf_counter()
    online_features(store, "change_risk_v1", latest)
    batch_ms = (time.perf_counter() - started) * 1000
    built = steps.built
    console.print(
        styled(
            "5. feature store",
            "bold",
            f" (Feast): {sum(built.rows.values())} rows in {len(built.rows)} sources, "
            f"{steps.applied['feature_views']} feature views; point-in-time training set {train.shape[0]} x "
            f"{train.shape[1] - 3} (change_risk_v1); online lookup of 100 commits {batch_ms:.1f} ms",
        ),
        highlight=False,
    )


def _model_row(result: TrainResult, role: str) -> ModelRow:
    from pipelines.report import ModelRow

    return ModelRow(result.kind, result.version, role, result.model_kind, dict(result.metrics))


def _demo_models(settings: Settings, tables: Path, config: ModelConfig | None) -> list[ModelRow]:
    from models.registry import tracking_uri
    from pipelines.train import train as run_training

    rows = []
    for kind in ("change-risk", "deploy-failure"):
        result = run_training(kind, settings, tables, config)
        m = result.metrics
        console.print(
            styled(
                "6. model",
                "bold",
                f" {kind} v{result.version}: test AUC {m['auc']:.3f}, Brier {m['brier']:.3f}, "
                f"Popt {m['popt']:.3f}, Recall@20%Effort {m['recall_at_20_effort']:.3f} "
                f"— {result.model_kind}",
            ),
            highlight=False,
        )
        rows.append(_model_row(result, "trained"))
    console.print(f"models and runs in MLflow at {tracking_uri(settings)}; browse them with `awo mlflow-ui`")
    return rows


def _promotion_line(kind: str, gate: dict[str, Any]) -> str:
    """One line of what the champion/challenger gate did (`pipelines.train.promote_model`'s answer)."""
    scores = gate.get("metrics") or {}
    compared = (
        f" (AUC {scores['challenger']['auc']:.3f} vs champion {scores['champion']['auc']:.3f}, "
        f"Brier {scores['challenger']['brier']:.3f} vs {scores['champion']['brier']:.3f}, "
        f"{gate['test_rows']} held-out rows)"
        if scores
        else ""
    )
    verdict = "promoted to champion" if gate["promoted"] else f"champion v{gate['champion']} kept"
    return f"{kind} v{gate['challenger']}: {verdict}: {gate['reason']}{compared}"


def _demo_promote(settings: Settings, tables: Path) -> list[str]:
    """The champion/challenger gate on both models: the challenger replaces the champion only when it is at
    least as good on the same held-out period."""
    from pipelines.train import promote_model

    kinds = ("change-risk", "deploy-failure")
    lines = [_promotion_line(kind, promote_model(kind, settings, tables)) for kind in kinds]
    console.print(styled("7. promote", "bold", ": " + "; ".join(lines)), highlight=False)
    return lines


@dataclass(frozen=True)
class RiskApi:
    """A running `awo serve`: where it listens and the token it accepts."""

    url: str
    token: str
    pid: int
    ready_s: float


@contextmanager
def risk_api(settings: Settings, log: Path, timeout_s: float = 180.0) -> Iterator[RiskApi]:
    """`awo serve` as a child process on a free local port, accepting one token made for it; stopped when
    the block ends, also on an error or Ctrl-C. Its output goes to `log`."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from features.errors import AwoError
    from serving.auth import new_token

    token, sha = new_token()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    env = {
        **os.environ,
        "AWO_DATA_DIR": str(settings.data_dir),
        "AWO_API_TOKENS": json.dumps([{"name": "awo-demo", "sha256": sha, "scopes": ["risk:read"]}]),
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        problem = _wait_until_ready(server, url, timeout_s)
        if problem:
            raise AwoError(f"the risk API ({url}) {problem}: see {log}")
        yield RiskApi(url, token, server.pid, time.perf_counter() - started)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_ready(server: Any, url: str, timeout_s: float) -> str | None:
    """None once `/readyz` answers 200 (a champion is loaded); else why not."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"exited with status {server.returncode} before it was ready"
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    return f"was not ready within {timeout_s:.0f} s"


def _demo_decisions(
    settings: Settings, repo: Path, tables: Path, scorer: RiskScorer, url: str
) -> list[Recorded]:
    """Decide on the newest 100 commits with the default policy, scored through `scorer` (the risk API),
    each recorded in the audit log; show the riskiest decision in full."""
    from collections import Counter

    from agents.assemble import ChangeRef
    from agents.engine import decide_change, policy_of
    from pipelines.cli.agents import print_decision
    from pipelines.label import load_commits

    policy = policy_of(settings)
    newest = load_commits(tables).sort_values("seq")["sha"].tail(100)
    recorded = [
        decide_change(
            ChangeRef(repo_path=repo, repo="demo", sha=sha, tables=tables), settings, policy, scorer=scorer
        )
        for sha in newest
    ]
    gates = Counter(r.decision.gate for r in recorded)
    scored = sum(r.decision.probability is not None for r in recorded)
    console.print(
        styled(
            "9. decisions",
            "bold",
            f" on the newest {len(recorded)} commits, {scored} scored by the risk API at {url} "
            f"(policy {policy.version}): "
            + ", ".join(
                f"{gate} {gates.get(gate, 0)}"
                for gate in ("fast_track", "standard", "senior_review", "block")
            )
            + "; every one in the audit log (`awo audit verify`)",
        ),
        highlight=False,
    )
    riskiest = max(recorded, key=lambda r: r.decision.probability or 0.0)
    print_decision(riskiest)
    return recorded


SPIKE_METRIC = "error_rate"


def canary_metric_files(
    template: AnalysisTemplate,
    seed: int,
    spike_from: int = 3,
    spike: float = 5.0,
    requests: int = 1500,
) -> tuple[str, str]:
    """The baseline's and the canary's metric files (CSV timestamp,metric,value, as agents.monitor's
    MetricFileSource reads them) over the template's `count` intervals, with equal traffic on both tracks:
    a 1% error rate, latency and saturation samples and KPI counts, all with noise; from interval
    `spike_from` (from 1) the canary's error rate is `spike` times higher. The judge decides on these
    numbers as on any others."""
    import numpy as np

    from features.errors import BadConfig

    if not any(m.name == SPIKE_METRIC and m.kind == "rate" for m in template.metrics):
        raise BadConfig(
            f"analysis template: no rate metric {SPIKE_METRIC!r} to put the demo's error spike in"
        )
    rng = np.random.default_rng(seed)
    files = []
    for track in ("baseline", "canary"):
        rows = ["timestamp,metric,value"]
        for i in range(template.count):
            stamp = f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00Z"
            n = int(rng.poisson(requests))
            for m in template.metrics:
                if m.kind == "rate":
                    rate = 0.01 if m.bad == "increase" else 0.3  # errors are rare; KPIs are common successes
                    if m.name == SPIKE_METRIC and track == "canary" and i + 1 >= spike_from:
                        rate *= spike
                    rows += [f"{stamp},{m.numerator},{rng.binomial(n, rate)}", f"{stamp},{m.denominator},{n}"]
                else:
                    level = 120.0 if "latency" in m.name else 0.5
                    for value in rng.normal(level, 0.05 * level, template.samples_per_interval):
                        rows.append(f"{stamp},{m.name},{value:.4f}")
        files.append("\n".join(rows) + "\n")
    return files[0], files[1]


class JudgedDryRun:
    """The dry-run executor with the canary analyst at each pause of a canary, as the Kubernetes executor
    has it (agents.kube): a rollback verdict fails the canary with the analyst's reason, a pause holds it;
    the verdicts are kept for the audit (agents.rollouts.audit_analyses). Everything else is the
    DryRunExecutor's."""

    name = "dry-run"

    def __init__(self, analyst: CanaryAnalyst, inner: DryRunExecutor | None = None) -> None:
        from agents.executor import DryRunExecutor

        self.analyst = analyst
        self.inner = inner if inner is not None else DryRunExecutor()
        self.verdicts: dict[str, list[Any]] = {}
        self._passed: set[str] = set()

    def run(self, task: Task) -> TaskResult:
        from agents.executor import TaskResult

        if task.kind != "canary" or task.id in self._passed:
            return self.inner.run(task)
        key = (task.environment or "", task.service or "")
        ref = str(task.params.get("ref"))
        stable = self.inner.running.get(key, "stable")
        actions: list[str] = []
        for i, step in enumerate(task.params.get("steps", [])):
            if "set_weight" in step:
                self.inner.canaries[key] = (ref, int(step["set_weight"]))
                actions.append(
                    f"set {task.service} canary {ref} in {task.environment} to {step['set_weight']}%"
                )
                continue
            verdict = self.analyst.analyse(task.service or "", task.environment or "", stable, ref, i)
            self.verdicts.setdefault(task.id, []).append(verdict)
            if verdict.action == "rollback":
                why = f"analysis at step {i}: rollback: {verdict.why}"
                return TaskResult(task_id=task.id, status="failed", detail=why, actions=actions)
            if verdict.action == "pause":
                why = f"analysis at step {i} inconclusive: {verdict.why}"
                return TaskResult(task_id=task.id, status="paused", detail=why, actions=actions)
        self._passed.add(task.id)
        self.inner.canaries.pop(key, None)  # the dry run sets the weights (and records them) itself
        return self.inner.run(task)


@dataclass(frozen=True)
class _Canary:
    run: RolloutRun
    approved_by: str | None
    decision: Decision


def _reviewer(policy: Policy) -> str:
    """Who the demo approves a senior_review rollout as: the first identity the policy lets approve."""
    import getpass

    allowed = [who for who in policy.overrides.allowed if who != "*"]
    return allowed[0] if allowed else getpass.getuser()


def _demo_canary(
    settings: Settings, policy: Policy, decisions: list[Decision], root: Path, seed: int
) -> _Canary:
    """Plan the rollout of the riskiest change the gate lets ship, as a canary, and carry it out on the
    dry-run executor with the canary analyst judging metric files that carry an error spike. Then the least
    risky shippable change, its canary judged on the same traffic without the spike: a rollout kept beside
    the rolled-back one (notebook 03 compares them)."""
    import re

    from agents.judge import load_template
    from features.errors import AwoError

    deployable = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a plan's service names (agents.planner)
    shippable = [
        d
        for d in decisions
        if d.gate != "block" and d.services and d.shas and all(deployable.match(s) for s in d.services)
    ]  # files outside every service map to "(root)", which no rollout can deploy
    if not shippable:
        raise AwoError("no decision of the demo lets a change ship (all blocked): nothing to roll out")
    decision = max(shippable, key=lambda d: d.probability or 0.0)
    template = load_template(settings.analysis_template)
    folder = root / "canary"
    run, approved_by = _judged_rollout(
        settings, policy, decision, folder, canary_metric_files(template, seed)
    )
    failed = [t for t in run.report.plan.tasks if t.status == "failed"]
    console.print(
        styled(
            "10. canary",
            "bold",
            f" of the riskiest change that may ship ({decision.shas[-1][:12]}, {decision.band} risk "
            f"{decision.probability or 0:.3f}, gate {decision.gate}"
            + (f", approved as {approved_by}" if approved_by else "")
            + f"): {run.report.plan.goal.describe()} on the dry-run executor, judged on {folder}/*.csv "
            f"(canary errors x5 from interval 3): {run.report.outcome}"
            + (f" — {failed[0].id}: {failed[0].detail}" if failed else ""),
        ),
        highlight=False,
    )
    others = [d for d in shippable if d.shas[-1] != decision.shas[-1]]
    if not others:
        console.print("    no other change may ship: no healthy canary to keep beside the rolled-back one")
    else:
        safest = min(others, key=lambda d: d.probability or 0.0)
        healthy = canary_metric_files(template, seed, spike=1.0)
        kept, _ = _judged_rollout(settings, policy, safest, folder / "healthy", healthy)
        console.print(
            f"    beside it, the least risky change that may ship ({safest.shas[-1][:12]}, risk "
            f"{safest.probability or 0:.3f}, gate {safest.gate}) judged on the same traffic without the "
            f"spike: {kept.report.outcome}",
            highlight=False,
        )
    return _Canary(run, approved_by, decision)


def _judged_rollout(
    settings: Settings, policy: Policy, decision: Decision, folder: Path, metrics: tuple[str, str]
) -> tuple[RolloutRun, str | None]:
    """Ship the decision's change as a canary on the dry-run executor, the canary analyst judging the
    (baseline, canary) metric files written to `folder`; the run and who approved it (None: not needed)."""
    from agents.judge import load_template
    from agents.monitor import CanaryAnalyst, ManualClock, MetricFileSource
    from agents.planner import CANARY_STRATEGIES, needs_approval, plan_goal, ship_goal
    from agents.rollouts import carry_out

    as_canary = decision.rollout_plan.strategy not in CANARY_STRATEGIES  # the demo wants a judged canary
    plan = plan_goal(ship_goal(decision, strategy="canary" if as_canary else None), decision, policy)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip(("baseline.csv", "canary.csv"), metrics, strict=True):
        (folder / name).write_text(text)
    source = MetricFileSource(folder / "baseline.csv", folder / "canary.csv")
    analyst = CanaryAnalyst(load_template(settings.analysis_template), source, clock=ManualClock())
    approved_by = _reviewer(policy) if needs_approval(plan) else None
    run = carry_out(plan, settings, executor=JudgedDryRun(analyst), approved_by=approved_by, policy=policy)
    return run, approved_by


def _demo_rollback_recorded(settings: Settings, run: RolloutRun) -> tuple[list[dict[str, Any]], list[str]]:
    """What the rollout left behind, read back: its audit records (the log verified) and its feedback rows."""
    from agents.engine import audit_log

    log = audit_log(settings)
    plan = run.report.plan
    records = [r for r in log.records() if r.get("plan_id") == plan.plan_id]
    verified = log.verify()
    analyses = [r for r in records if r.get("kind") == "canary_analysis"]
    finished = [r for r in records if r.get("kind") == "plan_run"]
    feedback = [f"deployment {r.row['deploy_id']} {r.row['outcome']}" for r in run.recorded]
    feedback += [f"incident {i}" for i in run.report.incidents]
    console.print(
        styled(
            "11. rollback recorded",
            "bold",
            f": audit log {len(records)} records of rollout {plan.plan_id} "
            f"(canary analyses: {', '.join(str(r.get('action')) for r in analyses) or 'none'}; run outcome "
            f"{', '.join(str(r.get('outcome')) for r in finished) or 'none'}), log "
            f"{'verified' if verified.ok else 'FAILED verification'}; feedback for `awo retrain`: "
            f"{'; '.join(feedback) or 'none'}",
        ),
        highlight=False,
    )
    return records, feedback


def _deployment_labels(tables: Path) -> tuple[int, int]:
    """(failed deployments, deployments) in the ingested deployments table: the deploy-failure labels."""
    from features.tables import DEPLOYMENTS_FILE, read_table

    deployments = read_table(tables / DEPLOYMENTS_FILE)
    if deployments is None:
        return 0, 0
    return int(deployments["failed"].sum()), len(deployments)


def _demo_retrain(
    settings: Settings, repo: Path, tables: Path, config: ModelConfig | None
) -> tuple[RetrainSummary, ModelRow]:
    """`awo retrain` for both models: the flow again (incremental), which ingests the feedback, then a
    challenger of each model and the promotion gate on each. Deploy-failure learns the rolled-back deployment;
    change-risk gets a second version for the champion/challenger comparison (notebook 02). Returns the
    summary (deploy-failure's version, both promotion lines) and the retrained change-risk row."""
    from pipelines.flow import prepare
    from pipelines.report import RetrainSummary
    from pipelines.train import promote_model
    from pipelines.train import train as run_training

    failed_before, total_before = _deployment_labels(tables)
    prepare(repo, settings, tables, name="demo")
    failed_after, total_after = _deployment_labels(tables)
    kinds = ("change-risk", "deploy-failure")
    results = {kind: run_training(kind, settings, tables, config) for kind in kinds}
    promotion = "; ".join(_promotion_line(kind, promote_model(kind, settings, tables)) for kind in kinds)
    versions = ", ".join(
        f"{kind} v{r.version} test AUC {r.metrics['auc']:.3f}" for kind, r in results.items()
    )
    console.print(
        styled(
            "12. retrain",
            "bold",
            f": the feedback ingested: failed deployments {failed_before} → {failed_after} "
            f"(deployments {total_before} → {total_after}); {versions}; {promotion}",
        ),
        highlight=False,
    )
    summary = RetrainSummary(
        failed_before,
        failed_after,
        total_before,
        total_after,
        _model_row(results["deploy-failure"], "retrained"),
        promotion,
    )
    return summary, _model_row(results["change-risk"], "retrained")


def bandit_command(python: str | None = None) -> list[str] | None:
    """How to run bandit with the interpreter `python` (default: this one): the script beside it, else
    `python -m bandit`; None when that interpreter has no bandit."""
    import subprocess
    import sys

    python = python or sys.executable
    beside = Path(python).parent / "bandit"
    if beside.is_file():
        return [str(beside)]
    probe = subprocess.run([python, "-c", "import bandit"], capture_output=True, check=False)
    return [python, "-m", "bandit"] if probe.returncode == 0 else None


def _scan_checkout(repo: Path, sha: str, folder: str, checkout: Path, sarif: Path, bandit: list[str]) -> Path:
    """bandit on `folder` of a clean export of commit `sha` (git archive: the world's repository is left as it
    is), as a CI job scans a pull request's base and head; its SARIF to `sarif`."""
    import io
    import subprocess
    import tarfile

    from features.errors import AwoError

    shutil.rmtree(checkout, ignore_errors=True)
    checkout.mkdir(parents=True)
    tar = subprocess.run(
        ["git", "archive", "--format=tar", sha, "--", folder], cwd=repo, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(checkout, filter="data")
    proc = subprocess.run(
        [*bandit, "-q", "-r", folder, "-f", "sarif", "-o", str(sarif)],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):  # 1: bandit found something
        raise AwoError(
            f"bandit on {folder} of {sha[:12]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
        )
    return sarif


def _demo_security(
    settings: Settings,
    world: WorldSummary,
    tables: Path,
    scorer: RiskScorer,
    folder: Path,
    bandit: list[str] | None,
) -> SecurityGateSummary | str:
    """The insecure pull request of the demo world: bandit on its service's folder in the base and the head,
    then the decision through `awo decide --sarif FILE --sarif-base FILE`'s own path (agents.engine), printed
    in full. Without bandit, or without the pull request, why the step was skipped."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    from agents.assemble import ChangeRef
    from agents.engine import decide_change, policy_of
    from pipelines.cli.agents import print_decision
    from pipelines.report import security_gate_summary

    change = world.security_change
    if change is None or bandit is None:
        why = (
            "the demo world has no insecure pull request"
            if change is None
            else f"bandit is not installed for {sys.executable} (the dev dependency group)"
        )
        console.print(styled("13. security gate", "bold", f": skipped: {why}"), highlight=False)
        return why
    try:
        scanner = f"bandit {version('bandit')}"
    except PackageNotFoundError:
        scanner = "bandit"
    started = time.perf_counter()
    base = _scan_checkout(
        world.repo, change.base, change.service, folder / "base", folder / "base.sarif", bandit
    )
    head = _scan_checkout(
        world.repo, change.sha, change.service, folder / "head", folder / "head.sarif", bandit
    )
    scan_s = time.perf_counter() - started
    recorded = decide_change(
        ChangeRef(repo_path=world.repo, repo="demo", sha=change.sha, tables=tables),
        settings,
        policy_of(settings),
        scorer=scorer,
        sarif=[head],
        sarif_base=[base],
    )
    decision = recorded.decision
    new = [f for f in decision.findings if f.status == "new"]
    console.print(
        styled(
            "13. security gate",
            "bold",
            f": pull request {change.branch} ({change.sha[:12]}, adds {change.path}) scanned by {scanner} on "
            f"{change.service}/ of the base and the head checkouts in {scan_s:.1f} s ({head}): "
            f"{len(decision.findings)} findings, {len(new)} new; "
            f"`awo decide --sarif {head.name} --sarif-base {base.name}` says:",
        ),
        highlight=False,
    )
    print_decision(recorded)
    return security_gate_summary(decision, change.branch, change.base, scanner, f"{change.service}/", scan_s)


def _champion_plots(settings: Settings) -> dict[str, str]:
    """The change-risk champion's evaluation plots (ROC, effort, calibration) as logged with its training
    run in MLflow, as `data:` URIs."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    from models.registry import CHAMPION, connect
    from pipelines.report import png_data_uri

    connect(settings)
    version = MlflowClient().get_model_version_by_alias("change-risk", CHAMPION)
    plots = {}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path="evaluation", dst_path=tmp
            )
        )
        for name, what in (
            ("roc.png", "ROC"),
            ("effort.png", "effort curve"),
            ("calibration.png", "calibration"),
        ):
            if (local / name).is_file():
                plots[f"{what} of the change-risk champion v{version.version}"] = png_data_uri(
                    (local / name).read_bytes()
                )
    return plots


def _print_table_overview(tables: Path) -> None:
    from rich.table import Table

    from pipelines.label import load_commits

    commits = load_commits(tables)
    table = Table(title="change metrics (Kamei et al. 2013) over the mined commits")
    for column in ("metric", "mean", "median", "p90", "max"):
        table.add_column(column, justify="right")
    for metric in ("la", "ld", "nf", "ns", "entropy", "lt", "ndev", "age", "nuc", "exp", "rexp", "sexp"):
        s = commits[metric].astype(float)
        table.add_row(
            metric, f"{s.mean():.1f}", f"{s.median():.1f}", f"{s.quantile(0.9):.1f}", f"{s.max():.1f}"
        )
    console.print(table)
    kinds = commits["change_kind"].value_counts()
    console.print("change kinds: " + ", ".join(f"{k} {v}" for k, v in kinds.items()), highlight=False)
