"""`awo mine`: per-commit change metrics, per-file rows and each commit's added and removed lines (the
diffs table) of one repository, written incrementally.

Point-in-time order. Commits are processed in order of `history_at` — the committer time raised, where
clocks disagree, to the latest `history_at` of the parents (git's "corrected commit date") — then
generation number, then sha. That order puts parents before children, depends only on a commit's
ancestors, and so is the same in every run. A commit's metrics use only the commits before it in that
order ("history strictly before the commit").

Incremental runs. The tables themselves are the checkpoint: the history state is replayed from the
rows kept, then only the rest is diffed. Rows from the earliest new or vanished commit onwards are
recomputed, so a run on top of earlier runs gives exactly the tables of a full re-mine — also after a
force-push (vanished commits are dropped with a warning) or a killed run (the next run resumes from the
last checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.change_metrics import ChangeHistory
from features.classify import BotRule, ServiceMap
from features.errors import AwoError
from features.mining.commits import (
    CommitRows,
    HistoryOrder,
    add_commit,
    epoch_seconds,
    graph_frame,
    point_in_time_order,
    replay_history,
)
from features.mining.gitlog import Repository
from features.settings import Settings
from features.tables import (
    COMMITS_FILE,
    COMMITS_SCHEMA,
    DIFFS_FILE,
    DIFFS_SCHEMA,
    FILES_FILE,
    FILES_SCHEMA,
    GRAPH_FILE,
    GRAPH_SCHEMA,
    LABEL_COLUMNS,
    exclusive,
    read_table,
    to_arrow,
    write_tables,
)

log = logging.getLogger(__name__)


@dataclass
class MineResult:
    repo: str
    out_dir: Path
    head: str
    commits_total: int = 0
    commits_mined: int = 0  # rows (re)computed in this run
    commits_new: int = 0  # of which never mined before
    files_mined: int = 0
    fix_commits: int = 0
    dropped: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def commits_per_second(self) -> float:
        return self.commits_mined / self.seconds if self.seconds > 0 else 0.0


def mine_repository(
    repo_path: Path,
    settings: Settings,
    out_dir: Path | None = None,
    branch: str | None = None,
    workers: int = 1,
    name: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> MineResult:
    """Mine `repo_path` into `out_dir` (default `<data root>/<repo name>/`)."""
    started = time.perf_counter()
    repository = Repository(repo_path)
    repo_name = name or repository.name
    out_dir = Path(out_dir) if out_dir else settings.repo_data_dir(repo_name)
    head = repository.resolve_branch(branch)
    services = ServiceMap.from_yaml(settings.service_map)
    bots = BotRule(settings.bot_patterns)
    result = MineResult(repo=repo_name, out_dir=out_dir, head=head)

    with exclusive(out_dir):
        graph = repository.graph(head)
        order = point_in_time_order(graph)
        parents = {node.sha: node.parents for node in graph}
        non_merge = sorted(
            (sha for sha, p in parents.items() if len(p) <= 1),
            key=lambda sha: (order[sha].history_ts, order[sha].generation, sha),
        )
        result.commits_total = len(non_merge)

        old_commits = read_table(out_dir / COMMITS_FILE, COMMITS_SCHEMA)
        old_files = read_table(out_dir / FILES_FILE, FILES_SCHEMA)
        old_diffs = read_table(out_dir / DIFFS_FILE, DIFFS_SCHEMA)
        if old_commits is not None and old_files is None:
            raise AwoError(f"{out_dir / FILES_FILE} is missing beside {COMMITS_FILE}; remove both to re-mine")
        if old_commits is not None:
            foreign = set(old_commits["repo"].unique()) - {repo_name}
            if foreign:
                raise AwoError(
                    f"{out_dir} holds tables of repository {sorted(foreign)[0]!r}, not {repo_name!r}; "
                    "pass another --data directory"
                )
        if old_commits is not None and old_diffs is None:
            # Tables mined before the diffs table existed: every commit is mined again, once.
            message = f"{out_dir / DIFFS_FILE} is missing: mining every commit again to write it"
            log.warning(message)
            result.warnings.append(message)
            old_commits = old_files = None
        kept_commits, kept_files, cut_ts = _rows_to_keep(old_commits, old_files, non_merge, order, result)
        kept_diffs = None
        if kept_commits is not None and old_diffs is not None:
            kept_diffs = old_diffs[old_diffs["sha"].isin(set(kept_commits["sha"]))].reset_index(drop=True)
        kept_shas = set(kept_commits["sha"]) if kept_commits is not None else set()
        todo = [sha for sha in non_merge if sha not in kept_shas and order[sha].history_ts >= cut_ts]
        mined_before = set(old_commits["sha"]) if old_commits is not None else set()
        result.commits_new = sum(1 for sha in todo if sha not in mined_before)

        history = ChangeHistory()
        if kept_commits is not None:
            replay_history(history, kept_commits, kept_files)
        graph_table = graph_frame(graph)
        if not todo and not result.dropped:
            stored_graph = read_table(out_dir / GRAPH_FILE, GRAPH_SCHEMA)
            if stored_graph is None or set(stored_graph["sha"]) != set(graph_table["sha"]):
                # New merges of mined commits change only the graph.
                write_tables(out_dir, {GRAPH_FILE: to_arrow(graph_table, GRAPH_SCHEMA, GRAPH_FILE)})
            result.seconds = time.perf_counter() - started
            result.fix_commits = int(kept_commits["is_fix"].sum()) if kept_commits is not None else 0
            return result

        rows = CommitRows()
        seq = len(kept_shas)
        last_checkpoint = time.monotonic()
        # Two git passes side by side, both in `todo` order; a short one is caught by the count below.
        code = repository.stream_code(todo, workers)
        streams = zip(repository.stream_commits(todo, workers), code, strict=False)
        for done, (raw, lines) in enumerate(streams, start=1):
            add_commit(
                rows, raw, lines, seq, order[raw.sha].history_ts, repo_name, history, settings, bots, services
            )
            seq += 1
            if on_progress:
                on_progress(done, len(todo))
            if time.monotonic() - last_checkpoint > settings.checkpoint_seconds:
                _write(out_dir, kept_commits, kept_files, kept_diffs, rows, graph_table)
                last_checkpoint = time.monotonic()
                # A resumed run starts from here; the kill-and-resume test waits for this line.
                log.info("checkpoint: %d of %d commits saved in %s", seq, result.commits_total, out_dir)
        if len(rows) != len(todo):
            raise AwoError(f"{repository.path}: git returned {len(rows)} of {len(todo)} commits")
        commits = _write(out_dir, kept_commits, kept_files, kept_diffs, rows, graph_table)

    result.commits_mined = len(rows)
    result.files_mined = len(rows.files["sha"])
    result.fix_commits = int(commits["is_fix"].sum())
    result.seconds = time.perf_counter() - started
    return result


def _rows_to_keep(
    old_commits: pd.DataFrame | None,
    old_files: pd.DataFrame | None,
    non_merge: list[str],
    order: dict[str, HistoryOrder],
    result: MineResult,
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, int]:
    """Rows of an earlier run that stay valid, and the point-in-time from which to recompute."""
    if old_commits is None or old_commits.empty:
        return None, None, -(2**62)
    current = set(non_merge)
    mined = set(old_commits["sha"])
    old_ts = dict(zip(old_commits["sha"], epoch_seconds(old_commits["history_at"]), strict=True))
    vanished = mined - current
    added = current - mined
    cut_candidates = [order[sha].history_ts for sha in added] + [old_ts[sha] for sha in vanished]
    if vanished:
        message = (
            f"history was rewritten: {len(vanished)} mined commits are no longer on the branch; "
            "dropping them and re-mining from where the histories diverge"
        )
        log.warning(message)
        result.warnings.append(message)
        result.dropped = len(vanished)
    if old_files is None:  # mine_repository refuses commits without files before it gets here
        raise AwoError("the files table is missing beside the commits table")
    if not cut_candidates:
        return old_commits, old_files, 2**62
    cut_ts = min(cut_candidates)
    keep = (epoch_seconds(old_commits["history_at"]) < cut_ts) & old_commits["sha"].isin(current)
    commits = old_commits[keep].reset_index(drop=True)
    files = old_files[old_files["sha"].isin(set(commits["sha"]))].reset_index(drop=True)
    return commits, files, cut_ts


def _write(
    out_dir: Path,
    kept_commits: pd.DataFrame | None,
    kept_files: pd.DataFrame | None,
    kept_diffs: pd.DataFrame | None,
    rows: CommitRows,
    graph: pd.DataFrame,
) -> pd.DataFrame:
    new_commits, new_files, new_diffs = rows.frames()
    if kept_commits is not None:
        # Labels depend on the newest commit (maturity) and on new fixes: `awo label` recomputes them.
        kept_commits = kept_commits.drop(columns=list(LABEL_COLUMNS), errors="ignore")
    commits = (
        new_commits if kept_commits is None else pd.concat([kept_commits, new_commits], ignore_index=True)
    )
    files = new_files if kept_files is None else pd.concat([kept_files, new_files], ignore_index=True)
    diffs = new_diffs if kept_diffs is None else pd.concat([kept_diffs, new_diffs], ignore_index=True)
    write_tables(
        out_dir,
        {
            GRAPH_FILE: to_arrow(graph, GRAPH_SCHEMA, GRAPH_FILE),
            FILES_FILE: to_arrow(files, FILES_SCHEMA, FILES_FILE),
            COMMITS_FILE: to_arrow(commits, COMMITS_SCHEMA, COMMITS_FILE),
            DIFFS_FILE: to_arrow(diffs, DIFFS_SCHEMA, DIFFS_FILE),
        },
    )
    return commits
