"""`awo mine`, `awo label`, `awo ingest`: the commands that turn a repository and its delivery history
into tables, and the summaries they print (shared with `awo retrain` and `awo demo`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

import typer

from features.errors import AwoError
from pipelines.cli.root import DataOption, app, console, err_console, load_settings, styled

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from features.settings import Settings
    from pipelines.ingest import IngestResult
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult
    from pipelines.org import RepoOutcome


class MiningProgress:
    """A progress bar on stderr (when it is a terminal) fed by mine_repository's `on_progress`. It starts
    on the first report and `stop()` removes it, so a flow can print the next stage's summary below."""

    def __init__(self) -> None:
        self._bar: tuple[Progress, TaskID] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
            self._bar = progress, progress.add_task("mine", total=None, rate=0.0)
            progress.start()
        if done == 1 or done % 200 == 0 or done == total:
            progress, task = self._bar
            elapsed = progress.tasks[0].elapsed or 1e-9
            progress.update(task, completed=done, total=total, rate=done / elapsed)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar[0].stop()
            self._bar = None

    def __enter__(self) -> MiningProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


TargetArgument = Annotated[
    Path,
    typer.Argument(
        help="a git repository, a folder of git repositories, or a text file listing repository paths"
    ),
]
RayFlag = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="one Ray task per repository on the cluster at ADDRESS (given after --ray), else at "
        "AWO_RAY_ADDRESS, else a single-machine cluster started for the run",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Argument(metavar="ADDRESS", help="with --ray: the cluster ('auto', HOST:PORT, ray://HOST:PORT)"),
]


@app.command()
def mine(
    repo: TargetArgument,
    ray_address: RayAddress = None,
    data: DataOption = None,
    branch: Annotated[str | None, typer.Option(help="branch to mine (default: HEAD)")] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="parallel git processes for diffs")] = 1,
    name: Annotated[
        str | None, typer.Option(help="repository name in the tables (default: folder name)")
    ] = None,
    service_map: Annotated[Path | None, typer.Option(help="YAML of path globs → service")] = None,
    ray: RayFlag = False,
) -> None:
    """Mine per-commit change metrics (Kamei et al.) and per-file rows, incrementally; an organisation's
    repositories one after another, or one Ray task each with --ray."""
    from pipelines.org import is_organisation

    settings = load_settings(service_map=service_map)
    if ray or is_organisation(repo):
        run_organisation_command("mine", repo, settings, ray, ray_address, data, name, workers, branch)
        return
    if ray_address is not None:
        raise AwoError(f"unexpected argument {ray_address!r}: a cluster address follows --ray")
    from pipelines.mine import mine_repository

    with MiningProgress() as progress:
        result = mine_repository(repo, settings, data, branch, workers, name, progress)
    print_mine_summary(result)


def run_organisation_command(
    kind: str,
    target: Path,
    settings: Settings,
    use_ray: bool,
    ray_address: str | None,
    data: Path | None,
    name: str | None,
    workers: int,
    option: object,
) -> None:
    """`awo mine|label` of several repositories, or of one on Ray: progress in repositories, one line per
    repository as it finishes, totals; exits non-zero at the end naming the repositories that failed."""
    import time
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from features.cluster import LOCAL
    from pipelines.org import discover, mining_totals, run_organisation

    if ray_address is not None and not use_ray:
        raise AwoError(f"unexpected argument {ray_address!r}: a cluster address follows --ray")
    organisation = discover(target)
    specs = organisation.repos
    if (data or name) and len(specs) > 1:
        raise AwoError(
            f"--data and --name name one repository; {target} holds {len(specs)}: their tables go to "
            "<data root>/<repo name>/ (set AWO_DATA_DIR)"
        )
    if specs and (data or name):
        specs = [replace(specs[0], name=name or specs[0].name, out_dir=data)]
    if organisation.skipped:
        shown = ", ".join(p.name for p in organisation.skipped[:10])
        more = f" and {len(organisation.skipped) - 10} more" if len(organisation.skipped) > 10 else ""
        err_console.print(
            styled(
                "warning:",
                "yellow",
                f" skipped {len(organisation.skipped)} entries of {target} that "
                f"are not git repositories: {shown}{more}",
            ),
            highlight=False,
        )
    address = (ray_address or settings.ray_address or LOCAL) if use_ray else None
    progress = Progress(
        TextColumn(f"{kind} repositories"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    task = progress.add_task(kind, total=len(specs))

    def on_done(outcome: RepoOutcome) -> None:
        progress.advance(task)
        if outcome.failed:
            err_console.print(
                styled("failed:", "bold red", f" {outcome.spec.name} ({outcome.spec.path}): {outcome.error}"),
                highlight=False,
            )
        else:
            console.print(_repo_line(kind, outcome), highlight=False)

    started = time.perf_counter()
    with progress:
        outcomes = run_organisation(
            kind,
            specs,
            settings,
            option,
            ray_address=address,
            use_ray=use_ray,
            workers=workers,
            on_done=on_done,
        )
    totals = mining_totals(outcomes, time.perf_counter() - started)
    where = f"on Ray ({address})" if use_ray else "in this process"
    mined = (
        f", {totals.commits_mined} commits mined, {totals.commits_per_second:,.0f} commits/s"
        if kind == "mine"
        else ""
    )
    console.print(
        f"{kind}: {totals.repos} repositories {where}{mined}, {totals.seconds:.2f} s, "
        f"{len(totals.failed)} failed",
        highlight=False,
    )
    if totals.failed:
        raise AwoError(
            f"{len(totals.failed)} of {totals.repos} repositories failed: {', '.join(totals.failed)}"
        )


def _repo_line(kind: str, outcome: RepoOutcome) -> str:
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult

    result = outcome.result
    if kind == "mine" and isinstance(result, MineResult):
        if result.commits_mined == 0:
            return f"{result.repo}: up to date at {result.head[:12]} — {result.commits_total} commits"
        return (
            f"{result.repo}: mined {result.commits_mined} of {result.commits_total} commits "
            f"({result.commits_new} new), {result.files_mined} file changes, {result.seconds:.2f} s "
            f"({result.commits_per_second:,.0f} commits/s)"
        )
    if isinstance(result, LabelResult):
        return (
            f"{outcome.spec.name}: labelled {result.bug_inducing + result.clean + result.unknown} commits: "
            f"{result.bug_inducing} bug-inducing, {result.clean} clean, {result.unknown} unknown; "
            f"{result.fixes} fixes{failed_fixes_note(result)}, {result.seconds:.1f} s"
        )
    return f"{outcome.spec.name}: done"


def print_mine_summary(result: MineResult, out: Console = console) -> None:
    """The mining result in numbers on `out` (stdout; stderr where stdout carries a command's JSON)."""
    for warning in result.warnings:
        err_console.print(styled("warning:", "yellow", f" {warning}"), highlight=False)
    if result.commits_mined == 0:
        out.print(
            f"{result.repo}: up to date at {result.head[:12]} — {result.commits_total} commits "
            f"({result.fix_commits} fixes) in {result.out_dir}",
            highlight=False,
        )
        return
    out.print(
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
    repo: TargetArgument,
    ray_address: RayAddress = None,
    data: DataOption = None,
    issues: Annotated[
        Path | None, typer.Option(help="issues.csv (issue_id, opened_at) for the date filter")
    ] = None,
    maturity_days: Annotated[
        float | None,
        typer.Option(min=0, help="labels younger than this are null (default: AWO_LABEL_MATURITY_DAYS, 180)"),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="parallel git blame processes")] = 2,
    fix: Annotated[str | None, typer.Option(help="only print the SZZ candidates of this fix commit")] = None,
    truth: Annotated[
        Path | None, typer.Option(help="truth.parquet to measure label precision/recall")
    ] = None,
    ray: RayFlag = False,
) -> None:
    """Label bug-inducing commits with R-SZZ (blame with move/copy detection); an organisation's
    repositories one after another, or one Ray task each with --ray."""
    from features.mining.gitlog import Repository
    from pipelines.label import audit_fix, label_repository
    from pipelines.org import is_organisation

    settings = load_settings()
    if ray or is_organisation(repo):
        for given, option in ((fix, "--fix"), (truth, "--truth"), (issues, "--issues")):
            if given is not None:
                raise AwoError(f"{option} is for one repository without --ray: label {repo} alone")
        run_organisation_command(
            "label", repo, settings, ray, ray_address, data, None, workers, maturity_days
        )
        return
    if ray_address is not None:
        raise AwoError(f"unexpected argument {ray_address!r}: a cluster address follows --ray")
    out_dir = data or settings.repo_data_dir(Repository(repo).name)
    if fix:
        _print_audit(audit_fix(repo, out_dir, fix, issues, workers))
        return
    maturity_days = settings.label_maturity_days if maturity_days is None else maturity_days
    result = label_repository(repo, settings, out_dir, issues, maturity_days, workers)
    console.print(
        f"labelled {result.bug_inducing + result.clean + result.unknown} commits: "
        f"{result.bug_inducing} bug-inducing, {result.clean} clean, {result.unknown} unknown "
        f"(younger than {maturity_days:g} days); {result.fixes} fixes, {result.fixes_with_candidates} "
        f"with SZZ candidates ({result.candidates} candidates judged)"
        f"{failed_fixes_note(result)}, {result.seconds:.1f} s",
        highlight=False,
    )
    if truth:
        print_label_quality(out_dir, truth)


def failed_fixes_note(result: LabelResult) -> str:
    """', N fixes failed (K diff unreadable, ...)' when git could not read some fixes in full (they label
    nothing; each failure is a row of szz_candidates.parquet with its reason)."""
    if not result.failed_fixes:
        return ""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.failures_by_reason.items()))
    return f", {result.failed_fixes} fixes failed ({kinds})"


def _print_audit(frame: pd.DataFrame) -> None:
    from rich.table import Table

    table = Table(title=f"SZZ candidates of fix {frame.attrs['fix'][:12]}")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    if frame.empty:
        console.print("no candidates: the fix removes or changes no code line (SZZ cannot label it)")


def print_label_quality(out_dir: Path, truth: Path) -> None:
    from features.labels import label_quality
    from features.tables import read_table
    from pipelines.label import load_commits

    truth_table = read_table(truth)
    if truth_table is None:
        raise AwoError(f"truth file {truth} does not exist")
    quality = label_quality(load_commits(out_dir), truth_table)
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
    security = "security"


@app.command()
def ingest(
    kind: Annotated[DeliveryKind, typer.Argument(help="what the file holds")],
    file: Annotated[
        Path, typer.Argument(help="CSV (with header) or JSON lines; for security, a SARIF 2.1.0 file")
    ],
    data: Annotated[Path, typer.Option("--data", help="the repository's data directory (as for awo mine)")],
    strict: Annotated[bool, typer.Option(help="reject the whole file if any row is bad")] = False,
    sha: Annotated[
        str | None, typer.Option(help="security: the commit the scan is of (findings that arrive later)")
    ] = None,
) -> None:
    """Ingest deployments, incidents or test runs (linked to commits and each other), or a security scan
    (SARIF) of one commit, which `awo decide` then weighs."""
    if kind is DeliveryKind.security:
        from pipelines.cli.agents import ingest_security, print_security_ingest_summary

        if sha is None:
            raise AwoError("awo ingest security needs --sha: the commit the scan is of")
        print_security_ingest_summary(*ingest_security(file, sha, data))
        return
    if sha is not None:
        raise AwoError(f"--sha is for security scans, not {kind.value}")
    from pipelines.ingest import ingest_file

    print_ingest_summary(ingest_file(kind.value, file, load_settings(), data, strict))


def print_ingest_summary(result: IngestResult) -> None:
    for reject in result.rejects[:10]:
        err_console.print(
            styled(
                "rejected",
                "yellow",
                f" {result.source}, line {reject.line}, field {reject.field}: {reject.reason}",
            ),
            highlight=False,
            soft_wrap=True,
        )
    if len(result.rejects) > 10:
        err_console.print(
            f"... and {len(result.rejects) - 10} more in {result.rejects_path}", highlight=False
        )
    for warning in result.warnings:
        err_console.print(styled("warning:", "yellow", f" {warning}"), highlight=False)
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
