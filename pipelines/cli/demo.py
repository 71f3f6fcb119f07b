"""`awo demo-world` (a repository with planted defects and known truth) and `awo demo` (the whole flow on
it, step by step, with numbers)."""

from __future__ import annotations

import shutil
import time
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

    from features.settings import Settings
    from pipelines.demo_world import WorldSummary
    from pipelines.features_job import BuildResult
    from pipelines.ingest import IngestResult
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult


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


class _DemoSteps(StageListener):
    """Prints steps 2-4 of the demo as the flow finishes them; step 5 adds a training set and an online
    lookup to what the flow built."""

    def __init__(self, world: WorldSummary, tables: Path, progress: MiningProgress) -> None:
        self.world, self.tables, self.progress = world, tables, progress
        self.ingested_any = False

    def mined(self, result: MineResult) -> None:
        self.progress.stop()
        console.print(styled("2. mine", "bold", ":"), end=" ")
        print_mine_summary(result)
        _print_table_overview(self.tables)

    def labelled(self, result: LabelResult) -> None:
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

    def features_ready(
        self, built: BuildResult, applied: dict[str, int], materialized: dict[str, Any]
    ) -> None:
        self.built, self.applied = built, applied


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="random seed of the demo world")] = 7,
    commits: Annotated[int, typer.Option(min=50, help="commits in the demo world")] = 2000,
) -> None:
    """Run the whole flow on the embedded demo world: generate it, mine it, summarise."""
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    settings = load_settings()
    root = settings.data_dir / "demo"
    tables = root / "tables"
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
    with MiningProgress() as progress:
        steps = _DemoSteps(world, tables, progress)
        store = prepare(
            world.repo, settings, tables, name="demo", delivery=world.repo.parent,
            on_progress=progress, listener=steps,
        )  # fmt: skip
    _demo_feature_store(store, steps, tables)
    _demo_models(settings, tables)
    _demo_decisions(settings, world.repo, tables)


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


def _demo_models(settings: Settings, tables: Path) -> None:
    from models.registry import tracking_uri
    from pipelines.train import train as run_training

    for kind in ("change-risk", "deploy-failure"):
        result = run_training(kind, settings, tables)
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
    console.print(f"models and runs in MLflow at {tracking_uri(settings)}; browse them with `awo mlflow-ui`")


def _demo_decisions(settings: Settings, repo: Path, tables: Path) -> None:
    """Decide on the newest 100 commits with the default policy (each recorded in the audit log) and show
    the riskiest decision in full."""
    from collections import Counter

    from agents.assemble import ChangeRef, InProcessScorer
    from agents.engine import decide_change, policy_of
    from pipelines.cli.agents import print_decision
    from pipelines.label import load_commits

    policy = policy_of(settings)
    scorer = InProcessScorer(settings)
    newest = load_commits(tables).sort_values("seq")["sha"].tail(100)
    recorded = [
        decide_change(
            ChangeRef(repo_path=repo, repo="demo", sha=sha, tables=tables), settings, policy, scorer=scorer
        )
        for sha in newest
    ]
    gates = Counter(r.decision.gate for r in recorded)
    console.print(
        styled(
            "7. decisions",
            "bold",
            f" on the newest {len(recorded)} commits (policy {policy.version}): "
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
