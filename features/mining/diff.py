"""The change_risk_v1 and v2 features of a change that is not mined yet (a pull request's commits): the
mined history is replayed from the tables, then the change is measured as of now with the miner's own code
(`features.mining.commits`, `features.mining.gitlog`) and the feature build's history
(`features.history.CommitHistory`). Nothing is written: the tables stay as `awo mine` and `awo label` left
them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.change_metrics import ChangeHistory, FileChange
from features.classify import BotRule
from features.errors import AwoError
from features.history import (
    ADDED_WHERE,
    CHANGE_RISK_V1,
    CHANGE_RISK_V2,
    DEFECT_HISTORY_FEATURES,
    commit_history_as_of,
)
from features.mining.commits import (
    as_change,
    replay_history,
    unmined_change_features,
    unmined_history_features,
)
from features.mining.gitlog import Repository
from features.settings import Settings
from features.tables import COMMITS_FILE, COMMITS_SCHEMA, FILES_FILE, FILES_SCHEMA, as_utc, read_table


@dataclass(frozen=True)
class UnminedChange:
    """A measured change: where it comes from, who made it, its change_risk_v1 features and its code (the
    change_risk_v2 code columns, read and capped as `awo mine` reads a commit's)."""

    repo: str
    merge_base: str
    head: str
    commits: tuple[str, ...]  # the range's commits, newest first
    author_id: str
    is_bot: bool
    at: pd.Timestamp  # the time it was measured as of
    files: tuple[FileChange, ...]
    features: dict[str, float]  # COMMIT_CHANGE_FEATURES: 14 Kamei metrics, kind flags, file counts
    history: dict[str, float]  # COMMIT_HISTORY_FEATURES: author, file and subsystem history (NaN: unknown)
    history_commits: int  # mined commits the history was replayed from
    unknown: tuple[str, ...] = ()  # features that cannot be known from the tables (NaN in `history`)
    message: str = ""  # the messages of the range's commits, newest first, joined by blank lines
    added_lines: tuple[str, ...] = ()  # of the diff from the merge base to the head
    added_where: tuple[str, ...] = ()  # "path:line" of each added line in the head's files
    removed_lines: tuple[str, ...] = ()
    truncated: bool = False  # lines dropped over DIFF_MAX_LINES or cut at DIFF_MAX_CHARS

    @property
    def vector(self) -> dict[str, float]:
        """The change_risk_v1 vector, in the feature service's order."""
        values = {**self.features, **self.history}
        return {name: values[name] for name in CHANGE_RISK_V1}

    @property
    def vector_v2(self) -> dict[str, object]:
        """The change_risk_v2 values as the feature service serves them online: the v1 floats, then the
        lines as lists of str and the message as str, then `added_where`."""
        code = {
            "added_lines": list(self.added_lines),
            "removed_lines": list(self.removed_lines),
            "message": self.message,
        }
        values: dict[str, object] = {**self.features, **self.history, **code}
        return {**{name: values[name] for name in CHANGE_RISK_V2}, ADDED_WHERE: list(self.added_where)}


def measure_unmined_change(
    repo_path: Path,
    base: str,
    head: str,
    settings: Settings,
    tables: Path | None = None,
    name: str | None = None,
    at: pd.Timestamp | None = None,
) -> UnminedChange:
    """The change_risk_v1 features and the code of what `head` adds over its merge base with `base`, as one
    change, as of `at` (default now), against the history mined and labelled into `tables` (default `<data
    root>/<repo name>/`): the values the feature build would give the change were it mined as the next
    commit, a defect counting once its first fix landed before `at`. Commits of the range that were mined
    already are left out of the history, so they are not counted twice, and so are commits whose
    `history_at` is after `at`. Without labels (`awo label` not run) the defect-history features are
    unknown (NaN, named in `unknown`). The code is the diff's added and removed lines, capped as the miner
    caps a commit's, and every message of the range (`message`)."""
    repository = Repository(repo_path)
    repo_name = name or repository.name
    tables = Path(tables) if tables else settings.repo_data_dir(repo_name)
    commits = read_table(tables / COMMITS_FILE, COMMITS_SCHEMA)
    files = read_table(tables / FILES_FILE, FILES_SCHEMA)
    if commits is None or files is None:
        raise AwoError(f"no mined tables in {tables}: run `awo mine {repo_path} --data {tables}` first")
    raw, shas = repository.read_unmined_change(base, head)
    code = repository.read_unmined_code(raw.parents[0], raw.sha)
    when = as_utc(at)
    # The change comes next in point-in-time order: after every commit mined as of `when`, before any later.
    commits = commits[~commits["sha"].isin(set(shas)) & (commits["history_at"] <= when)]
    files = files[files["sha"].isin(set(commits["sha"]))]
    history = ChangeHistory()
    replay_history(history, commits, files)
    bots = BotRule(settings.bot_patterns)
    change = as_change(raw, when.timestamp(), settings, bots)
    past = commit_history_as_of(commits, files, when)
    known = unmined_history_features(raw, when, past, settings, bots)
    unknown = () if "fixed_by" in commits.columns else DEFECT_HISTORY_FEATURES
    return UnminedChange(
        repo=repo_name,
        merge_base=raw.parents[0],
        head=raw.sha,
        commits=tuple(shas),
        author_id=change.author_id,
        is_bot=change.is_bot,
        at=when,
        files=raw.files,
        features=unmined_change_features(raw, when, history, settings, bots),
        history={n: math.nan if n in unknown else v for n, v in known.items()},
        history_commits=len(history),
        unknown=unknown,
        message=raw.message,
        added_lines=code.added_lines,
        added_where=code.added_where,
        removed_lines=code.removed_lines,
        truncated=code.truncated,
    )
