"""Point-in-time change metrics of commits: the order commits are processed in, the rows of the commits,
files and diffs tables, and the history state replayed from stored rows. Pure functions over data read from
git (`features.mining.gitlog`); the incremental job that drives them is `pipelines.mine`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.change_metrics import KAMEI_METRICS, Change, ChangeHistory, FileChange
from features.classify import (
    BotRule,
    ServiceMap,
    author_id,
    change_kind,
    file_kind,
    is_fix_message,
    subsystem_of,
)
from features.errors import UnreadableRepository
from features.history import COMMIT_HISTORY_FEATURES, ChangedFile, CommitHistory, change_features
from features.mining.gitlog import CommitCode, GraphNode, RawCommit
from features.settings import Settings
from features.tables import COMMITS_SCHEMA, DIFFS_SCHEMA, FILES_SCHEMA, unix_seconds


@dataclass(frozen=True, slots=True)
class HistoryOrder:
    history_ts: int
    generation: int


def point_in_time_order(graph: list[GraphNode]) -> dict[str, HistoryOrder]:
    """history_at (corrected commit time) and generation of every commit; `graph` lists parents first."""
    order: dict[str, HistoryOrder] = {}
    for node in graph:
        parents = [order[p] for p in node.parents if p in order]
        history_ts = max([node.committed_ts, *(p.history_ts for p in parents)])
        generation = 1 + max((p.generation for p in parents), default=0)
        order[node.sha] = HistoryOrder(history_ts, generation)
    return order


def epoch_seconds(timestamps: pd.Series) -> np.ndarray:
    """Whole unix seconds of a timestamp column (git times are whole seconds)."""
    return np.floor(unix_seconds(timestamps)).astype(np.int64)


class CommitRows:
    """Column lists of new rows, in processing order."""

    def __init__(self) -> None:
        self.commits: dict[str, list] = {name: [] for name in COMMITS_SCHEMA.names}
        self.files: dict[str, list] = {name: [] for name in FILES_SCHEMA.names}
        self.diffs: dict[str, list] = {name: [] for name in DIFFS_SCHEMA.names}

    def __len__(self) -> int:
        return len(self.commits["sha"])

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """The new rows of commits.parquet, files.parquet and diffs.parquet."""
        commits = pd.DataFrame(self.commits)
        for col in ("committed_at", "history_at"):
            commits[col] = pd.to_datetime(commits[col], unit="s", utc=True)
        diffs = pd.DataFrame(self.diffs)
        diffs["committed_at"] = pd.to_datetime(diffs["committed_at"], unit="s", utc=True)
        return commits, pd.DataFrame(self.files), diffs


def replay_history(history: ChangeHistory, commits: pd.DataFrame, files: pd.DataFrame) -> None:
    """Rebuild the history state from stored rows, in their point-in-time order."""
    by_sha: dict[str, list[FileChange]] = {}
    for sha, path, old_path, change_type, la, ld, binary in zip(
        files["sha"], files["path"], files["old_path"], files["change_type"], files["la"], files["ld"],
        files["is_binary"], strict=True,
    ):  # fmt: skip
        by_sha.setdefault(sha, []).append(
            FileChange(
                path, change_type, int(la), int(ld), old_path if isinstance(old_path, str) else None, binary
            )
        )
    commits = commits.sort_values("seq")
    at = epoch_seconds(commits["history_at"])
    for sha, author, ts, is_fix, is_bot in zip(
        commits["sha"], commits["author_id"], at, commits["is_fix"], commits["is_bot"], strict=True
    ):
        history.record(Change(tuple(by_sha.get(sha, ())), author, float(ts), bool(is_fix), bool(is_bot)))


def as_change(raw: RawCommit, history_ts: float, settings: Settings, bots: BotRule) -> Change:
    """A commit read from git as the change its metrics are computed of: files, pseudonymous author
    (after .mailmap), point-in-time, fix and bot flags."""
    return Change(
        raw.files,
        author_id(raw.author_email, raw.author_name, settings.identity_salt),
        float(history_ts),
        is_fix_message(raw.message),
        bots.is_bot(raw.author_name, raw.author_email),
    )


def unmined_change_features(
    raw: RawCommit, at: pd.Timestamp, history: ChangeHistory, settings: Settings, bots: BotRule
) -> dict[str, float]:
    """The commit_change features (14 Kamei metrics, change-kind flags, file-type counts) of a change
    that is not mined, as of `at`, against `history` (replayed from the mined tables, see
    `replay_history`), computed as `add_commit` computes them for mined commits; `history` is left as it
    was (the change is not recorded)."""
    kinds = [file_kind(f.path) for f in raw.files]
    metrics = history.metrics(as_change(raw, at.timestamp(), settings, bots))
    return change_features(metrics, change_kind(raw.message, kinds), kinds)


def changed_files(files: Iterable[FileChange]) -> list[ChangedFile]:
    """The files of a diff as the history features read them: what the files table stores of each."""
    return [ChangedFile(f.path, f.old_path, f.change_type, f.la, f.ld, subsystem_of(f.path)) for f in files]


def unmined_history_features(
    raw: RawCommit, at: pd.Timestamp, history: CommitHistory, settings: Settings, bots: BotRule
) -> dict[str, float]:
    """The commit_history features (author, file and subsystem history) of a change that is not mined, as
    of `at`, against `history` (see `features.history.commit_history_as_of`): the values the feature build
    gives a mined commit at `at` after the same history; `history` is left as it was."""
    change = as_change(raw, at.timestamp(), settings, bots)
    values = history.features(change.author_id, change.is_bot, changed_files(raw.files), at)
    return dict(zip(COMMIT_HISTORY_FEATURES, values, strict=True))


def add_commit(
    rows: CommitRows,
    raw: RawCommit,
    code: CommitCode,
    seq: int,
    history_ts: int,
    repo_name: str,
    history: ChangeHistory,
    settings: Settings,
    bots: BotRule,
    services: ServiceMap,
) -> None:
    if code.sha != raw.sha:
        raise UnreadableRepository(f"git gave the lines of {code.sha} beside the metrics of {raw.sha}")
    described = as_change(raw, history_ts, settings, bots)
    is_bot, ident, is_fix = described.is_bot, described.author_id, described.is_fix
    kinds = [file_kind(f.path) for f in raw.files]
    metrics = history.metrics_then_record(described)
    shown_name, shown_email = (ident, ident) if settings.pseudonymize else (raw.author_name, raw.author_email)
    c = rows.commits
    c["repo"].append(repo_name)
    c["sha"].append(raw.sha)
    c["seq"].append(seq)
    c["parents"].append(list(raw.parents))
    c["committed_at"].append(raw.committed_ts)
    c["history_at"].append(history_ts)
    c["author_id"].append(ident)
    c["author_name"].append(shown_name)
    c["author_email"].append(shown_email)
    c["is_bot"].append(is_bot)
    c["message_subject"].append(raw.message.split("\n", 1)[0].strip())
    c["is_fix"].append(is_fix)
    c["change_kind"].append(change_kind(raw.message, kinds))
    for metric in KAMEI_METRICS:
        c[metric].append(metrics[metric])
    f = rows.files
    for change, kind in zip(raw.files, kinds, strict=True):
        f["repo"].append(repo_name)
        f["sha"].append(raw.sha)
        f["path"].append(change.path)
        f["old_path"].append(change.old_path)
        f["change_type"].append(change.change_type)
        f["la"].append(change.la)
        f["ld"].append(change.ld)
        f["is_binary"].append(change.is_binary)
        f["is_test"].append(kind.is_test)
        f["is_docs"].append(kind.is_docs)
        f["is_config"].append(kind.is_config)
        f["is_migration"].append(kind.is_migration)
        f["is_ui_text"].append(kind.is_ui_text)
        f["subsystem"].append(subsystem_of(change.path))
        f["service"].append(services.service_of(change.path))
    d = rows.diffs
    d["repo"].append(repo_name)
    d["sha"].append(raw.sha)
    d["seq"].append(seq)
    d["committed_at"].append(raw.committed_ts)
    d["message"].append(raw.message)
    d["added_lines"].append(list(code.added_lines))
    d["added_where"].append(list(code.added_where))
    d["removed_lines"].append(list(code.removed_lines))
    d["truncated"].append(code.truncated)


def graph_frame(graph: list[GraphNode]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sha": [n.sha for n in graph],
            "parents": [list(n.parents) for n in graph],
            "committed_at": pd.to_datetime([n.committed_ts for n in graph], unit="s", utc=True),
        }
    )
