"""The `awo` command line: one command per pipeline stage. Heavy libraries are imported inside the
commands, so `awo --help` starts fast."""

from __future__ import annotations

import logging
import shutil
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from features.errors import AwoError

app = typer.Typer(
    name="awo",
    help="Agentic Workflow Orchestrator: how risky is a change, what to test, how to ship it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=False, soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="directory of this repository's tables (default: <data root>/<repo name>/)"),
]


def _settings(**overrides):
    from features.settings import load_settings

    return load_settings(**overrides)


def _fail(exc: AwoError) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def mine(
    repo: Annotated[Path, typer.Argument(help="path of a local git repository")],
    data: DataOption = None,
    branch: Annotated[str | None, typer.Option(help="branch to mine (default: HEAD)")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="parallel git processes for diffs")] = 1,
    name: Annotated[
        str | None, typer.Option(help="repository name in the tables (default: folder name)")
    ] = None,
    service_map: Annotated[Path | None, typer.Option(help="YAML of path globs → service")] = None,
) -> None:
    """Mine per-commit change metrics (Kamei et al.) and per-file rows, incrementally."""
    try:
        settings = _settings(service_map=service_map)
        result = _run_mine(repo, settings, data, branch, workers, name)
    except AwoError as exc:
        _fail(exc)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    _print_mine_summary(result)


def _run_mine(repo, settings, data, branch, workers, name):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipelines.mine import mine_repository

    progress = Progress(
        TextColumn("mining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} commits/s"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    task = progress.add_task("mine", total=None, rate=0.0)

    def on_progress(done: int, total: int) -> None:
        if done == 1 or done % 200 == 0 or done == total:
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, completed=done, total=total, rate=done / elapsed)

    with progress:
        return mine_repository(repo, settings, data, branch, workers, name, on_progress)


def _print_mine_summary(result) -> None:
    if result.commits_mined == 0:
        console.print(
            f"{result.repo}: up to date at {result.head[:12]} — {result.commits_total} commits "
            f"({result.fix_commits} fixes) in {result.out_dir}",
            highlight=False,
        )
        return
    console.print(
        f"{result.repo}: mined {result.commits_mined} of {result.commits_total} commits "
        f"({result.commits_new} new, {result.commits_mined - result.commits_new} recomputed), "
        f"{result.files_mined} file changes, {result.fix_commits} fix commits in total, "
        f"{result.seconds:.2f} s ({result.commits_per_second:,.0f} commits/s)"
        + (f", dropped {result.dropped} rewritten commits" if result.dropped else "")
        + f"\n  tables: {result.out_dir}/commits.parquet, files.parquet",
        highlight=False,
    )


@app.command()
def label(
    repo: Annotated[Path, typer.Argument(help="path of the mined git repository")],
    data: DataOption = None,
    issues: Annotated[
        Path | None, typer.Option(help="issues.csv (issue_id, opened_at) for the date filter")
    ] = None,
    maturity_days: Annotated[float, typer.Option(min=0, help="labels younger than this are null")] = 180.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="parallel git blame processes")] = 2,
    fix: Annotated[str | None, typer.Option(help="only print the SZZ candidates of this fix commit")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="truth.parquet to measure label precision/recall")
    ] = None,
) -> None:
    """Label bug-inducing commits with R-SZZ (blame with move/copy detection)."""
    from features.mining.gitlog import Repository
    from pipelines.label import audit_fix, label_repository

    try:
        settings = _settings()
        out_dir = data or settings.repo_data_dir(Repository(repo).name)
        if fix:
            _print_audit(audit_fix(repo, out_dir, fix, issues, workers))
            return
        result = label_repository(repo, settings, out_dir, issues, maturity_days, workers)
        console.print(
            f"labelled {result.bug_inducing + result.clean + result.unknown} commits: "
            f"{result.bug_inducing} bug-inducing, {result.clean} clean, {result.unknown} unknown "
            f"(younger than {maturity_days:g} days); {result.fixes} fixes, {result.fixes_with_candidates} "
            f"with SZZ candidates ({result.candidates} candidates judged), {result.seconds:.1f} s",
            highlight=False,
        )
        if truth:
            _print_label_quality(out_dir, truth)
    except AwoError as exc:
        _fail(exc)


def _print_audit(frame) -> None:
    from rich.table import Table

    table = Table(title=f"SZZ candidates of fix {frame.attrs['fix'][:12]}")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    if frame.empty:
        console.print("no candidates: the fix removes or changes no code line (SZZ cannot label it)")


def _print_label_quality(out_dir: Path, truth: Path) -> None:
    from features.labels import label_quality
    from features.tables import read_table

    if not truth.exists():
        raise AwoError(f"truth file {truth} does not exist")
    quality = label_quality(read_table(out_dir / "commits.parquet"), read_table(truth))
    console.print(
        f"against {truth.name}: precision {quality['precision']:.3f}, recall {quality['recall']:.3f} "
        f"(of defects ever fixed: {quality['recall_fixed']:.3f}); {quality['true_positive']} of "
        f"{quality['labelled_positive']} labels right, {quality['truly_inducing']} truly bug-inducing",
        highlight=False,
    )


class DeliveryKind(StrEnum):
    deployments = "deployments"
    incidents = "incidents"
    test_runs = "test-runs"


@app.command()
def ingest(
    kind: Annotated[DeliveryKind, typer.Argument(help="what the file holds")],
    file: Annotated[Path, typer.Argument(help="CSV (with header) or JSON lines")],
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory (as for awo mine)")],
    strict: Annotated[bool, typer.Option(help="reject the whole file if any row is bad")] = False,
) -> None:
    """Ingest deployments, incidents or test runs; link them to commits and each other."""
    from pipelines.ingest import ingest_file

    try:
        result = ingest_file(kind.value, file, _settings(), data, strict)
    except AwoError as exc:
        _fail(exc)
    _print_ingest_summary(result)


def _print_ingest_summary(result) -> None:
    for reject in result.rejects[:10]:
        err_console.print(
            f"[yellow]rejected[/] {result.source}, line {reject.line}, field {reject.field}: {reject.reason}",
            highlight=False,
            soft_wrap=True,
        )
    if len(result.rejects) > 10:
        err_console.print(
            f"... and {len(result.rejects) - 10} more in {result.rejects_path}", highlight=False
        )
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    lines = [
        f"{result.kind}: {result.accepted} of {result.rows_read} rows accepted, "
        f"{len(result.rejects)} problems"
        + (f" (written to {result.rejects_path})" if result.rejects_path else "")
        + f"; {result.stored} stored"
    ]
    if result.deployments:
        lines.append(f"  deployments: {result.deployments}, failed {result.failed_deployments}")
    if result.incidents:
        lines.append(f"  incidents: {result.incidents}, linked to a deployment {result.linked_incidents}")
    if result.tests:
        lines.append(f"  tests: {result.tests}, flaky {result.flaky_tests}")
    console.print("\n".join(lines), highlight=False)


features_app = typer.Typer(help="The Feast feature store: apply, build, materialize, training sets.")
app.add_typer(features_app, name="features")


@features_app.command("apply")
def features_apply() -> None:
    """Register the entities, feature views and feature services in the Feast registry."""
    from features.store import apply, open_store, store_dir

    try:
        settings = _settings()
        counts = apply(open_store(settings))
    except AwoError as exc:
        _fail(exc)
    console.print(
        f"applied {counts['entities']} entities, {counts['feature_views']} feature views, "
        f"{counts['feature_services']} feature services to {store_dir(settings)}",
        highlight=False,
    )


@features_app.command("build")
def features_build(
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory (as for awo mine)")],
) -> None:
    """Compute point-in-time history features of a repository into the Feast sources."""
    from pipelines.features_job import build_features

    try:
        result = build_features(_settings(), data)
    except AwoError as exc:
        _fail(exc)
    rows = ", ".join(f"{name} {n}" for name, n in result.rows.items())
    console.print(
        f"built features of {result.repo} in {result.seconds:.1f} s: {rows} rows"
        + ("" if result.labelled else " (no labels yet: run `awo label` for defect history)"),
        highlight=False,
    )


@features_app.command("materialize")
def features_materialize(
    end: Annotated[str | None, typer.Option(help="materialize up to this ISO time (default: now)")] = None,
) -> None:
    """Load the newest feature values into the online store (incremental)."""
    import time
    from datetime import datetime

    from features.store import materialize, open_store

    try:
        until = None
        if end:
            try:
                until = datetime.fromisoformat(end.replace("Z", "+00:00"))
            except ValueError:
                raise AwoError(f"--end {end!r} is not an ISO 8601 time") from None
        started = time.perf_counter()
        result = materialize(open_store(_settings()), until)
    except AwoError as exc:
        _fail(exc)
    console.print(
        f"materialized {result['feature_views']} feature views up to {result['end']:%Y-%m-%d %H:%M:%S} "
        f"in {time.perf_counter() - started:.1f} s"
        + (f"; skipped (no data yet): {', '.join(result['skipped'])}" if result["skipped"] else ""),
        highlight=False,
    )


@features_app.command("training-set")
def features_training_set(
    entities: Annotated[Path, typer.Option(help="parquet or CSV: join keys and event_timestamp")],
    out: Annotated[Path, typer.Option(help="parquet file to write")],
    service: Annotated[str, typer.Option(help="feature service")] = "change_risk_v1",
) -> None:
    """Point-in-time correct features (Feast get_historical_features) for a list of entities."""
    import pandas as pd

    from features.store import open_store, training_set

    try:
        if not entities.exists():
            raise AwoError(f"entities file {entities} does not exist")
        frame = pd.read_csv(entities) if entities.suffix == ".csv" else pd.read_parquet(entities)
        if "event_timestamp" in frame.columns:
            frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        result = training_set(open_store(_settings()), frame, service)
        result.to_parquet(out, index=False)
    except AwoError as exc:
        _fail(exc)
    features = result.shape[1] - frame.shape[1]
    missing = int(result.iloc[:, frame.shape[1] :].isna().all(axis=1).sum())
    console.print(
        f"training set: {len(result)} rows x {features} features of {service} -> {out}"
        f" ({missing} rows with no features at their timestamp)",
        highlight=False,
    )


class ModelKind(StrEnum):
    change_risk = "change-risk"
    deploy_failure = "deploy-failure"


@app.command()
def train(
    model: Annotated[ModelKind, typer.Argument(help="which model to train")],
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory")],
    gap_days: Annotated[float, typer.Option(min=0, help="label-maturity gap before the test period")] = 30.0,
    config: Annotated[Path | None, typer.Option(help="YAML of model hyperparameters (ModelConfig)")] = None,
) -> None:
    """Train a model on the Feast training set, evaluate it time-ordered, register it as challenger."""
    from pipelines.train import train as run_training

    try:
        result = run_training(model.value, _settings(), data, _model_config(config), gap_days)
    except AwoError as exc:
        _fail(exc)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)
    m = result.metrics
    console.print(
        f"{result.kind} version {result.version} ({result.model_kind}): train {result.rows['train']}, "
        f"validation {result.rows['validation']}, calibration {result.rows['calibration']}, "
        f"test {result.rows['test']} rows, {result.seconds:.1f} s\n"
        f"  test: AUC {m['auc']:.3f}, PR-AUC {m['pr_auc']:.3f}, Brier {m['brier']:.3f}, F1 {m['f1']:.3f}, "
        f"Recall@20%Effort {m['recall_at_20_effort']:.3f}, Effort@20%Recall {m['effort_at_20_recall']:.3f}, "
        f"Popt {m['popt']:.3f}",
        highlight=False,
    )
    if len(result.rolling):
        aucs = ", ".join(f"{r.test_from:%Y-%m}: {r.auc:.2f}" for r in result.rolling.itertuples())
        console.print(f"  rolling AUC by test window: {aucs}", highlight=False)


def _model_config(path: Path | None):
    from pydantic import ValidationError

    from models.risk_model import ModelConfig

    if path is None:
        return None
    import yaml

    try:
        return ModelConfig(**(yaml.safe_load(path.read_text()) or {}))
    except FileNotFoundError:
        raise AwoError(f"model config {path} does not exist") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AwoError(f"model config {path}, field {first['loc'][0]}: {first['msg']}") from None


@app.command()
def promote(
    model: Annotated[ModelKind, typer.Argument(help="which model")],
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory")],
    gap_days: Annotated[float, typer.Option(min=0)] = 30.0,
) -> None:
    """Promote the challenger to champion if it is at least as good on the same held-out period."""
    from pipelines.train import promote_model

    try:
        result = promote_model(model.value, _settings(), data, gap_days)
    except AwoError as exc:
        _fail(exc)
    for role in ("champion", "challenger"):
        m = result["metrics"].get(role)
        if m:
            console.print(
                f"  {role:<10} v{result[role]}: AUC {m['auc']:.3f}, Brier {m['brier']:.4f}, "
                f"Popt {m['popt']:.3f}",
                highlight=False,
            )
    verdict = "promoted" if result["promoted"] else "kept the champion"
    console.print(f"{model.value}: {verdict} — {result['reason']}", highlight=False)


@app.command()
def retrain(
    repo: Annotated[Path, typer.Argument(help="path of the git repository")],
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory")],
    model: Annotated[ModelKind, typer.Option(help="which model to retrain")] = ModelKind.change_risk,
    gap_days: Annotated[float, typer.Option(min=0)] = 30.0,
) -> None:
    """The feedback loop: re-mine incrementally, relabel, rebuild features, train a challenger, run the
    promotion gate."""
    from features.store import apply, materialize, open_store
    from pipelines.features_job import build_features
    from pipelines.label import label_repository
    from pipelines.train import promote_model
    from pipelines.train import train as run_training

    try:
        settings = _settings()
        mined = _run_mine(repo, settings, data, None, 1, None)
        console.print("1. mine:", end=" ")
        _print_mine_summary(mined)
        labels = label_repository(repo, settings, data)
        console.print(
            f"2. label: {labels.bug_inducing} bug-inducing, {labels.clean} clean, {labels.unknown} unknown"
        )
        built = build_features(settings, data)
        store = open_store(settings)
        apply(store)
        materialize(store)
        console.print(f"3. features: {sum(built.rows.values())} rows built and materialized")
        trained = run_training(model.value, settings, data, None, gap_days)
        console.print(
            f"4. train: {trained.kind} v{trained.version}, test AUC {trained.metrics['auc']:.3f}, "
            f"Brier {trained.metrics['brier']:.3f}",
            highlight=False,
        )
        gate = promote_model(model.value, settings, data, gap_days)
    except AwoError as exc:
        _fail(exc)
    verdict = "promoted to champion" if gate["promoted"] else "champion kept"
    console.print(f"5. promote: {verdict} — {gate['reason']}", highlight=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64)] = 1,
) -> None:
    """Start the risk API with uvicorn. Each worker reloads the champions on its own timer."""
    import os
    import shutil as sh

    import uvicorn

    settings = _settings()
    if workers > 1:
        # Prometheus counts from every worker, aggregated at /metrics (the client's multi-process mode).
        directory = settings.data_dir / f"prometheus-{port}"
        sh.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    if not settings.api_tokens:
        err_console.print(
            "[yellow]warning:[/] no API tokens configured: every scoring call will get 401 "
            "(create one with `awo token`)"
        )
    console.print(f"risk API on http://{host}:{port} ({workers} worker{'s' if workers > 1 else ''})")
    uvicorn.run(
        "serving.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="warning"
    )


@app.command()
def token(
    name: Annotated[str, typer.Option(help="who the token is for")],
    scopes: Annotated[str, typer.Option(help="comma-separated: risk:read, models:reload")] = "risk:read",
) -> None:
    """Create an API token: prints the token (give it to the client) and the line to add to the config."""
    from serving.auth import new_token

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    bad = [s for s in wanted if s not in ("risk:read", "models:reload")]
    if bad:
        _fail(AwoError(f"unknown scopes {bad}; use risk:read and/or models:reload"))
    secret, sha = new_token()
    console.print(f"token (shown once): {secret}", highlight=False)
    console.print("add to the config file (AWO_CONFIG) under api_tokens:", highlight=False)
    console.print(f"  - {{name: {name}, sha256: {sha}, scopes: [{', '.join(wanted)}]}}", highlight=False)


@app.command("mlflow-ui")
def mlflow_ui(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="server processes")] = 1,
) -> None:
    """Start the MLflow UI on the project's tracking store."""
    import os

    from models.registry import tracking_uri

    settings = _settings()
    uri = tracking_uri(settings)
    artifacts = (settings.data_dir / "mlartifacts").resolve()
    console.print(f"MLflow UI on http://{host}:{port} for {uri}", highlight=False)
    mlflow = Path(sys.executable).with_name("mlflow")
    options = ["--backend-store-uri", uri, "--default-artifact-root", artifacts.as_uri()]
    options += ["--host", host, "--port", str(port), "--workers", str(workers)]
    os.execv(str(mlflow), [str(mlflow), "ui", *options])


benchmark_app = typer.Typer(help="Benchmarks on public data.")
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("jit")
def benchmark_jit(
    dataset: Annotated[Path, typer.Option(help="folder of CSVs in the ISSTA'21 JIT schema")],
    out: Annotated[Path | None, typer.Option(help="write the table as JSON here too")] = None,
    track: Annotated[bool, typer.Option(help="log one MLflow run per project")] = True,
) -> None:
    """Within-project JIT defect prediction: first 80% train, last 20% test, beside two baselines."""
    from models.jit_benchmark import benchmark_table

    try:
        table = benchmark_table(dataset, _settings() if track else None, out)
    except AwoError as exc:
        _fail(exc)
    _print_benchmark(table)


def _print_benchmark(table) -> None:
    from rich.table import Table

    view = Table(title="JIT defect prediction, last 20% of each project as test")
    for column in table.columns:
        view.add_column(column, justify="right" if column not in ("project", "model") else "left")
    for row in table.itertuples(index=False):
        view.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(view)


@app.command("demo-world")
def demo_world(
    out: Annotated[Path, typer.Option(help="folder to create the demo repository in")],
    seed: Annotated[int, typer.Option(help="random seed; the same seed gives the same world")] = 7,
    commits: Annotated[int, typer.Option(min=50, max=200_000, help="number of commits")] = 2000,
) -> None:
    """Generate a git repository with known planted defects (ground truth in truth.parquet)."""
    from pipelines.demo_world import generate_world

    try:
        world = generate_world(out, seed=seed, n_commits=commits)
    except AwoError as exc:
        _fail(exc)
    console.print(
        f"demo world: {world.commits} commits by {world.authors} authors over {world.days} days "
        f"in {world.repo}\n"
        f"  planted defects in {world.bug_inducing} commits, fixed by {world.fix_commits} commits "
        f"({world.unfixed} never fixed); truth: {world.truth_path}",
        highlight=False,
    )


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="random seed of the demo world")] = 7,
    commits: Annotated[int, typer.Option(min=50, help="commits in the demo world")] = 2000,
) -> None:
    """Run the whole flow on the embedded demo world: generate it, mine it, summarise."""
    from pipelines.demo_world import generate_world

    try:
        settings = _settings()
        root = settings.data_dir / "demo"
        world = generate_world(root / "world", seed=seed, n_commits=commits, overwrite=True)
        shutil.rmtree(root / "tables", ignore_errors=True)  # the demo always starts from scratch
        console.print(
            f"[bold]1. demo world[/]: {world.commits} commits, {world.authors} authors, {world.days} days, "
            f"{world.bug_inducing} defect-inducing commits ({world.unfixed} never fixed)",
            highlight=False,
        )
        result = _run_mine(world.repo, settings, root / "tables", None, 1, "demo")
        console.print("[bold]2. mine[/]:", end=" ")
        _print_mine_summary(result)
        _print_table_overview(root / "tables")
        from pipelines.label import label_repository

        labels = label_repository(world.repo, settings, root / "tables")
        console.print(
            f"[bold]3. label[/] (R-SZZ): {labels.bug_inducing} bug-inducing, {labels.clean} clean, "
            f"{labels.unknown} not mature yet, from {labels.fixes} fix commits",
            highlight=False,
        )
        _print_label_quality(root / "tables", world.truth_path)
        from pipelines.ingest import ingest_file

        console.print("[bold]4. ingest[/] delivery history:")
        for kind, name in (
            ("deployments", "deployments.csv"),
            ("incidents", "incidents.csv"),
            ("test-runs", "test-runs.csv"),
        ):
            _print_ingest_summary(ingest_file(kind, world.repo.parent / name, settings, root / "tables"))
        _demo_feature_store(settings, root / "tables")
        _demo_models(settings, root / "tables")
    except AwoError as exc:
        _fail(exc)


def _demo_feature_store(settings, tables: Path) -> None:
    import time

    from features.store import apply, materialize, online_features, open_store, training_set
    from features.tables import read_table
    from pipelines.features_job import build_features

    built = build_features(settings, tables)
    store = open_store(settings)
    counts = apply(store)
    materialize(store)
    commits = read_table(tables / "commits.parquet")
    entities = commits[["repo", "sha", "committed_at"]].rename(columns={"committed_at": "event_timestamp"})
    train = training_set(store, entities, "change_risk_v1")
    latest = [{"repo": "demo", "sha": sha} for sha in commits["sha"].tail(100)]
    online_features(store, "change_risk_v1", latest[:1])
    started = time.perf_counter()
    online_features(store, "change_risk_v1", latest)
    batch_ms = (time.perf_counter() - started) * 1000
    console.print(
        f"[bold]5. feature store[/] (Feast): {sum(built.rows.values())} rows in {len(built.rows)} sources, "
        f"{counts['feature_views']} feature views; point-in-time training set {train.shape[0]} x "
        f"{train.shape[1] - 3} (change_risk_v1); online lookup of 100 commits {batch_ms:.1f} ms",
        highlight=False,
    )


def _demo_models(settings, tables: Path) -> None:
    from models.registry import tracking_uri
    from pipelines.train import train as run_training

    for kind in ("change-risk", "deploy-failure"):
        result = run_training(kind, settings, tables)
        m = result.metrics
        console.print(
            f"[bold]6. model[/] {kind} v{result.version}: test AUC {m['auc']:.3f}, Brier {m['brier']:.3f}, "
            f"Popt {m['popt']:.3f}, Recall@20%Effort {m['recall_at_20_effort']:.3f} — {result.model_kind}",
            highlight=False,
        )
    console.print(f"models and runs in MLflow at {tracking_uri(settings)}; browse them with `awo mlflow-ui`")


def _print_table_overview(tables: Path) -> None:
    from rich.table import Table

    from features.tables import read_table

    commits = read_table(tables / "commits.parquet")
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


def main() -> None:  # pragma: no cover - entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
