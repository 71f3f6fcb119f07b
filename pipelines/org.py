"""An organisation's repositories mined or labelled as one job: sequentially in this process, or one Ray
task per repository on a cluster. Each job is the existing incremental single-repository job, so its tables
stay the checkpoint: a re-run, or Ray's re-run of a task whose worker died, does only what is missing."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import AwoError
from features.settings import Settings

if TYPE_CHECKING:
    from pipelines.label import LabelResult
    from pipelines.mine import MineResult

LOCK_WAIT_SECONDS = 60.0  # how long a (re-run) task waits for the lock of a task that is still dying


@dataclass(frozen=True)
class RepoSpec:
    """One repository of the organisation: its name in the tables and its path (the same on every node)."""

    name: str
    path: Path
    out_dir: Path | None = None  # None: <data root>/<name>/


@dataclass
class Organisation:
    """What `discover` found: the repositories, and the entries it skipped because they are not one."""

    repos: list[RepoSpec]
    skipped: list[Path] = field(default_factory=list)


@dataclass
class RepoOutcome:
    """One repository's job: its result, or the one-line error that stopped it."""

    spec: RepoSpec
    result: MineResult | LabelResult | None = None
    error: str | None = None
    seconds: float = 0.0  # driver-side wall time from submission to result

    @property
    def failed(self) -> bool:
        return self.error is not None


def is_git_repository(path: Path) -> bool:
    """A work tree (`.git` folder or file) or a bare repository (HEAD and objects/)."""
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _spec(path: Path) -> RepoSpec:
    """A repository named as the folder, list or link names it (a link `org/payments -> /srv/git/repo`
    is `payments`), read at its resolved path."""
    path = path.expanduser()
    return RepoSpec(path.name.removesuffix(".git"), path.resolve())


def discover(target: Path) -> Organisation:
    """The repositories `target` names: a git repository; a folder whose direct children are repositories
    (others are skipped and listed); or a text file with one repository path a line (`#` comments, paths
    relative to the file's folder). Two repositories of one name are an error naming both."""
    target = Path(target).expanduser()
    if not target.exists():
        raise AwoError(f"{target} does not exist")
    skipped: list[Path] = []
    if target.is_file():
        specs = []
        for number, raw in enumerate(target.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            path = Path(line).expanduser()
            path = path if path.is_absolute() else target.parent / path
            if not is_git_repository(path):
                raise AwoError(f"{target}, line {number}: {path} is not a git repository")
            specs.append(_spec(path))
        if not specs:
            raise AwoError(f"{target} lists no repositories (one path a line)")
    elif is_git_repository(target):
        specs = [_spec(target)]
    else:
        specs = []
        for child in sorted(target.iterdir()):
            if child.is_dir() and is_git_repository(child):
                specs.append(_spec(child))
            else:
                skipped.append(child)
        if not specs:
            raise AwoError(f"{target} is not a git repository and holds none")
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in seen:
            raise AwoError(
                f"two repositories are named {spec.name!r}: {seen[spec.name]} and {spec.path} "
                "(their tables would share one folder)"
            )
        seen[spec.name] = spec.path
    return Organisation(specs, skipped)


def wait_for_lock(directory: Path, timeout_s: float = LOCK_WAIT_SECONDS) -> None:
    """Wait until no job holds `directory`'s job lock (features.tables.exclusive). The kernel releases a
    dead process's lock, but a task Ray runs again may start while the worker it replaces is still being
    killed (a dead driver's tasks die a moment after it); without this wait the re-run would fail at once."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(directory / ".lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return  # the job itself then fails with its one-line "another awo job" error
                time.sleep(0.2)
            else:
                fcntl.flock(lock, fcntl.LOCK_UN)
                return


def mine_one(spec: RepoSpec, settings: Settings, branch: str | None, workers: int) -> MineResult:
    """The job of one repository (a Ray task's body, or a step of the sequential loop)."""
    from pipelines.mine import mine_repository

    out_dir = spec.out_dir or settings.repo_data_dir(spec.name)
    wait_for_lock(out_dir)
    return mine_repository(spec.path, settings, out_dir, branch, workers, spec.name)


def label_one(spec: RepoSpec, settings: Settings, maturity_days: float | None, workers: int) -> LabelResult:
    from pipelines.label import label_repository

    out_dir = spec.out_dir or settings.repo_data_dir(spec.name)
    wait_for_lock(out_dir)
    return label_repository(spec.path, settings, out_dir, None, maturity_days, workers)


def _as_outcome(spec: RepoSpec, job: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run a job; a user error (bad input) is a result, not an exception, so Ray never retries it."""
    try:
        return job(), None
    except AwoError as exc:
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _task(kind: str, spec: RepoSpec, settings: Settings, option: Any, workers: int) -> tuple[Any, str | None]:
    job = mine_one if kind == "mine" else label_one
    return _as_outcome(spec, lambda: job(spec, settings, option, workers))


def run_organisation(
    kind: str,
    specs: list[RepoSpec],
    settings: Settings,
    option: Any,
    *,
    ray_address: str | None,
    use_ray: bool,
    workers: int = 1,
    on_done: Callable[[RepoOutcome], None] | None = None,
) -> list[RepoOutcome]:
    """Run the `kind` job ("mine": option is the branch; "label": the maturity in days) of every repository;
    outcomes in the order they finish. A failing repository never stops the others."""
    if kind not in ("mine", "label"):
        raise ValueError(f"unknown organisation job {kind!r}")
    outcomes: list[RepoOutcome] = []

    def done(outcome: RepoOutcome) -> None:
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)

    if not use_ray:
        for spec in specs:
            started = time.perf_counter()
            result, error = _task(kind, spec, settings, option, workers)
            done(RepoOutcome(spec, result, error, time.perf_counter() - started))
        return outcomes

    from features.cluster import connect

    ray = connect(ray_address)
    remote = ray.remote(_task).options(num_cpus=1, max_retries=settings.ray_task_retries)
    started_at: dict[Any, float] = {}
    pending: dict[Any, RepoSpec] = {}
    for spec in specs:
        ref = remote.remote(kind, spec, settings, option, workers)
        pending[ref] = spec
        started_at[ref] = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            spec = pending.pop(ref)
            try:
                result, error = ray.get(ref)
            except ray.exceptions.RayError as exc:
                # A bug in the job (its traceback is in the worker's log) or a task out of retries.
                text = str(exc).strip().splitlines()
                result, error = None, f"{type(exc).__name__}: {text[-1] if text else ''}".strip(": ")
            done(RepoOutcome(spec, result, error, time.perf_counter() - started_at[ref]))
    return outcomes


def mine_organisation(
    specs: list[RepoSpec],
    settings: Settings,
    *,
    ray_address: str | None,
    use_ray: bool,
    workers: int = 1,
    branch: str | None = None,
    on_done: Callable[[RepoOutcome], None] | None = None,
) -> list[RepoOutcome]:
    """Mine every repository into its own data folder (pipelines.mine, incremental)."""
    return run_organisation(
        "mine",
        specs,
        settings,
        branch,
        ray_address=ray_address,
        use_ray=use_ray,
        workers=workers,
        on_done=on_done,
    )


def label_organisation(
    specs: list[RepoSpec],
    settings: Settings,
    *,
    ray_address: str | None,
    use_ray: bool,
    workers: int = 2,
    maturity_days: float | None = None,
    on_done: Callable[[RepoOutcome], None] | None = None,
) -> list[RepoOutcome]:
    """Label every mined repository with R-SZZ (pipelines.label)."""
    return run_organisation(
        "label",
        specs,
        settings,
        maturity_days,
        ray_address=ray_address,
        use_ray=use_ray,
        workers=workers,
        on_done=on_done,
    )


@dataclass(frozen=True)
class MiningTotals:
    repos: int
    failed: list[str]
    commits_mined: int
    seconds: float

    @property
    def commits_per_second(self) -> float:
        return self.commits_mined / self.seconds if self.seconds > 0 else 0.0


def mining_totals(outcomes: list[RepoOutcome], seconds: float) -> MiningTotals:
    """The totals of a mining run (wall time `seconds` of the whole run)."""
    mined = sum(getattr(o.result, "commits_mined", 0) for o in outcomes if not o.failed)
    return MiningTotals(len(outcomes), sorted(o.spec.name for o in outcomes if o.failed), mined, seconds)


def is_organisation(target: Path) -> bool:
    """Whether `target` names several repositories (a list file, or a folder of repositories) rather than
    one: anything else goes to the single-repository job unchanged, with its own errors."""
    target = Path(target).expanduser()
    if target.is_file():
        return True
    if not target.is_dir() or is_git_repository(target):
        return False
    return any(child.is_dir() and is_git_repository(child) for child in target.iterdir())
