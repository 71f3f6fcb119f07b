"""`awo train`, `awo promote`, `awo retrain` (the feedback loop) and `awo benchmark jit`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from features.errors import AwoError
from pipelines.cli.mining import (
    MiningProgress,
    RayAddress,
    failed_fixes_note,
    print_ingest_summary,
    print_mine_summary,
)
from pipelines.cli.root import app, console, err_console, load_settings, styled
from pipelines.flow import StageListener

if TYPE_CHECKING:
    import pandas as pd

    from features.settings import Settings
    from models.distributed import WorkerPlace
    from models.risk_model import ModelConfig
    from pipelines.features_job import BuildResult
    from pipelines.ingest import IngestResult
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult
    from pipelines.train import TrainResult


class ModelKind(StrEnum):
    change_risk = "change-risk"
    deploy_failure = "deploy-failure"


@app.command()
def train(
    model: Annotated[ModelKind, typer.Argument(help="which model to train")],
    ray_address: RayAddress = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="the repository's data directory (one repository)")
    ] = None,
    gap_days: Annotated[float, typer.Option(min=0, help="label-maturity gap before the test period")] = 30.0,
    config: Annotated[Path | None, typer.Option(help="YAML of model hyperparameters (ModelConfig)")] = None,
    org: Annotated[
        bool,
        typer.Option(
            "--org", help="change-risk across every labelled repository under the data root (not --data)"
        ),
    ] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="with --org: LightGBM data-parallel across Ray workers on the cluster at ADDRESS (given "
            "after --ray), else at AWO_RAY_ADDRESS, else a single-machine cluster started for the run",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="with --ray: training workers, one CPU each (AWO_TRAIN_WORKERS)"),
    ] = None,
) -> None:
    """Train a model on the Feast training set, evaluate it time-ordered, register it as challenger."""
    settings = load_settings()
    _check_train_scope(model, data, org, ray, ray_address, workers)
    if org:
        from pipelines.train import train_org

        result = train_org(
            settings,
            _model_config(config),
            gap_days,
            ray=ray,
            ray_address=ray_address,
            workers=workers,
            on_start=_print_training_workers,
        )
    else:
        from pipelines.train import train as run_training

        assert data is not None  # checked above
        result = run_training(model.value, settings, data, _model_config(config), gap_days)
    for note in result.notes:
        err_console.print(styled("note:", "yellow", f" {note}"), highlight=False)
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


def _check_train_scope(
    model: ModelKind,
    data: Path | None,
    org: bool,
    ray: bool,
    ray_address: str | None,
    workers: int | None,
) -> None:
    """One repository (--data) or the organisation (--org); Ray and its options only with --org."""
    if org and data is not None:
        raise AwoError("--org trains on every repository under the data root: leave out --data")
    if not org and data is None:
        raise AwoError("which data? --data DIR for one repository, or --org for every repository")
    if org and model is not ModelKind.change_risk:
        raise AwoError(f"--org trains change-risk only; {model.value} is trained per repository (--data)")
    if ray_address is not None and not ray:
        raise AwoError(f"unexpected argument {ray_address!r}: a cluster address follows --ray")
    if ray and not org:
        raise AwoError(
            "--ray trains the organisation-wide model: add --org (per-repository models stay local)"
        )
    if workers is not None and not ray:
        raise AwoError("--workers is the number of Ray training workers: add --ray")


def _print_training_workers(places: list[WorkerPlace]) -> None:
    where = ", ".join(f"{p.ip}:{p.port}" for p in places)
    err_console.print(f"training on {len(places)} Ray workers: {where}", highlight=False)


def _model_config(path: Path | None) -> ModelConfig | None:
    if path is None:
        return None
    import yaml
    from pydantic import ValidationError

    from models.risk_model import ModelConfig

    try:
        return ModelConfig(**(yaml.safe_load(path.read_text()) or {}))
    except FileNotFoundError:
        raise AwoError(f"model config {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise AwoError(f"model config {path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise AwoError(f"model config {path}, field {first['loc'][0]}: {first['msg']}") from None


@app.command()
def promote(
    model: Annotated[ModelKind, typer.Argument(help="which model")],
    data: Annotated[
        Path | None, typer.Option("--data", help="the repository's data directory (one repository)")
    ] = None,
    gap_days: Annotated[float, typer.Option(min=0)] = 30.0,
    org: Annotated[
        bool, typer.Option("--org", help="the organisation-wide model, on every labelled repository's rows")
    ] = False,
) -> None:
    """Promote the challenger to champion if it is at least as good on the same held-out period."""
    from pipelines.train import promote_model

    if org == (data is not None):
        raise AwoError("give either --data DIR (one repository's model) or --org (the organisation's)")
    result = promote_model(model.value, load_settings(), data, gap_days)
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


class _RetrainSteps(StageListener):
    """Prints steps 1-3 of `awo retrain` as the flow finishes them."""

    def __init__(self, progress: MiningProgress) -> None:
        self.progress = progress

    def mined(self, result: MineResult) -> None:
        self.progress.stop()
        console.print("1. mine:", end=" ")
        print_mine_summary(result)

    def labelled(self, result: LabelResult) -> None:
        console.print(
            f"2. label: {result.bug_inducing} bug-inducing, {result.clean} clean, {result.unknown} unknown"
            f"{failed_fixes_note(result)}"
        )

    def ingested(self, result: IngestResult) -> None:  # the agents' feedback: rollouts and incidents
        console.print("   ingest:", end=" ")
        print_ingest_summary(result)

    def features_ready(
        self, built: BuildResult, applied: dict[str, int], materialized: dict[str, Any]
    ) -> None:
        console.print(f"3. features: {sum(built.rows.values())} rows built and materialized")


@app.command()
def retrain(
    repo: Annotated[
        Path,
        typer.Argument(
            help="the git repository, or an organisation: a folder of repositories or a list file"
        ),
    ],
    ray_address: RayAddress = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="the repository's data directory (one repository)")
    ] = None,
    model: Annotated[ModelKind, typer.Option(help="which model to retrain")] = ModelKind.change_risk,
    gap_days: Annotated[float, typer.Option(min=0)] = 30.0,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="an organisation on Ray: one mining and labelling task per repository and the model trained "
            "across Ray workers, on the cluster at ADDRESS (given after --ray), else AWO_RAY_ADDRESS, else a "
            "single-machine cluster started for the run",
        ),
    ] = False,
) -> None:
    """The feedback loop: re-mine incrementally, relabel, rebuild features, train a challenger, run the
    promotion gate. For an organisation (or with --ray): every repository under the data root, and the
    organisation-wide change-risk model."""
    from pipelines.org import is_organisation
    from pipelines.train import promote_model
    from pipelines.train import train as run_training

    settings = load_settings()
    if ray or is_organisation(repo):
        _retrain_organisation(repo, settings, model, gap_days, data, ray, ray_address)
        return
    if ray_address is not None:
        raise AwoError(f"unexpected argument {ray_address!r}: a cluster address follows --ray")
    if data is None:
        raise AwoError(f"--data is required for one repository: the data directory of {repo}")
    from pipelines.flow import prepare

    with MiningProgress() as progress:
        prepare(repo, settings, data, on_progress=progress, listener=_RetrainSteps(progress))
    trained = run_training(model.value, settings, data, None, gap_days)
    _print_trained(trained)
    _print_gate(promote_model(model.value, settings, data, gap_days))


def _retrain_organisation(
    target: Path,
    settings: Settings,
    model: ModelKind,
    gap_days: float,
    data: Path | None,
    use_ray: bool,
    ray_address: str | None,
) -> None:
    """`awo retrain ORG [--ray]`: mine and label every repository (one Ray task each with --ray), build
    and materialize their features, train the organisation-wide change-risk model (data-parallel across
    Ray workers with --ray) and run its promotion gate on the organisation's newest held-out period."""
    from features.store import apply, materialize, open_store
    from pipelines.cli.mining import run_organisation_command
    from pipelines.features_job import build_features
    from pipelines.train import labelled_repositories, promote_model, train_org

    if model is not ModelKind.change_risk:
        raise AwoError(f"an organisation retrains the change-risk model; {model.value} is per repository")
    if data is not None:
        raise AwoError("--data names one repository's tables; an organisation's live under the data root")
    console.print("1. mine:")
    run_organisation_command("mine", target, settings, use_ray, ray_address, None, None, 1, None)
    console.print("2. label:")
    run_organisation_command("label", target, settings, use_ray, ray_address, None, None, 2, None)
    rows = 0
    directories = labelled_repositories(settings.data_dir)
    for directory in directories:
        rows += sum(build_features(settings, directory).rows.values())
    store = open_store(settings)
    apply(store)
    materialize(store)
    console.print(
        f"3. features: {len(directories)} repositories, {rows} rows built and materialized "
        f"({settings.offline_store} offline store)",
        highlight=False,
    )
    trained = train_org(
        settings,
        None,
        gap_days,
        ray=use_ray,
        ray_address=ray_address,
        on_start=_print_training_workers if use_ray else None,
    )
    _print_trained(trained)
    _print_gate(promote_model(model.value, settings, None, gap_days))


def _print_trained(trained: TrainResult) -> None:
    console.print(
        f"4. train: {trained.kind} v{trained.version} ({trained.model_kind}), test AUC "
        f"{trained.metrics['auc']:.3f}, Brier {trained.metrics['brier']:.3f}",
        highlight=False,
    )


def _print_gate(gate: dict[str, Any]) -> None:
    verdict = "promoted to champion" if gate["promoted"] else "champion kept"
    console.print(f"5. promote: {verdict} — {gate['reason']}", highlight=False)


benchmark_app = typer.Typer(help="Benchmarks on public data.")
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("jit")
def benchmark_jit(
    dataset: Annotated[
        Path | None,
        typer.Option(help="folder of CSVs in the ISSTA'21 JIT schema (default: AWO_PUBLIC_JIT_DIR)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the table as JSON here too")] = None,
    track: Annotated[bool, typer.Option(help="log one MLflow run per project")] = True,
) -> None:
    """Within-project JIT defect prediction: first 80% train, last 20% test, beside two baselines."""
    from models.jit_benchmark import benchmark_table

    settings = load_settings()
    folder = dataset or settings.public_jit_dir
    _print_benchmark(benchmark_table(folder, settings if track else None, out))


def _print_benchmark(table: pd.DataFrame) -> None:
    from rich.table import Table

    view = Table(title="JIT defect prediction, last 20% of each project as test")
    for column in table.columns:
        view.add_column(column, justify="right" if column not in ("project", "model") else "left")
    for row in table.itertuples(index=False):
        view.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(view)


@benchmark_app.command("jit-code")
def benchmark_jit_code(
    dataset: Annotated[
        Path, typer.Option(help="folder with a commits.parquet in the openstack-jitline schema")
    ],
    out: Annotated[Path | None, typer.Option(help="write the rows as JSON here too")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples of each paired AUC difference")] = 2000,
) -> None:
    """The code-reading model on the published split and a time-ordered 80/20 split, beside metrics-only
    models and JITLine's published predictions, with paired bootstrap intervals of the AUC differences."""
    from rich.table import Table

    from models.jit_code_benchmark import run_jit_code_benchmark

    table = run_jit_code_benchmark(dataset, out, bootstrap=bootstrap)
    view = Table(title=f"JIT defect prediction with code, {dataset}")
    for column in (
        "split",
        "model",
        "auc",
        "f1",
        "precision",
        "recall",
        "train_seconds",
        "AUC diff [95% CI]",
    ):
        view.add_column(column, justify="left" if column in ("split", "model") else "right")
    for row in table.to_dict(orient="records"):
        tests = [
            f"{k[3:]}: {v['auc_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
            for k, v in row.items()
            if k.startswith("vs ") and isinstance(v, dict)
        ]
        view.add_row(
            row["split"],
            row["model"],
            *(f"{row[c]:.3f}" for c in ("auc", "f1", "precision", "recall")),
            f"{row['train_seconds']:.1f}",
            "\n".join(tests),
        )
    console.print(view)
