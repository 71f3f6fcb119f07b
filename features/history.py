"""Rolling history features, computed as of each event's time from strictly earlier data only.

A defect counts in a history only once it is *known*: a bug-inducing commit becomes a known defect when
its first fix lands. So a defect discovered after a commit never changes that commit's features.

Produced tables (the Feast sources, see features/feature_repo/definitions.py):
- commit_change (repo, sha, committed_at): the 14 Kamei metrics, change-kind flags, file-type counts.
- commit_history (repo, sha, committed_at): the author's, files' and subsystems' history before the commit,
  per-file values rolled up to the commit (max / mean over its files).
- change_risk_v1_vector (repo, sha, committed_at): both of the above packed into one array, in the
  feature service's order, for batch online lookups (Feast's SQLite store keeps one row per entity and
  feature: 100 commits x 44 features is 4,400 rows to decode, one vector per commit is 100).
- commit_code (repo, sha, committed_at): the lines a commit adds (with "path:line" of each) and removes,
  and its message, as `awo mine` kept them in diffs.parquet (the change_risk_v2 code columns).
- author_history (author_id, event_at): an author's state after each of their commits (online lookups).
- file_history (repo, path, event_at): a file's state after each change (online lookups).
- deployment_change (deploy_id, started_at): what a deployment ships and its service's health before it.
- service_health (service, event_at): a service's health after each deployment or incident (online).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.change_metrics import KAMEI_METRICS
from features.tables import CODE_COLUMNS, unix_seconds

CHANGE_KINDS = ("fix", "feature", "refactor", "docs", "test", "chore")
FILE_FLAGS = ("is_test", "is_docs", "is_config", "is_migration", "is_ui_text")
DAY = pd.Timedelta(days=1)

COMMIT_CHANGE_FEATURES = (
    *KAMEI_METRICS,
    *(f"kind_{k}" for k in CHANGE_KINDS),
    "n_test_files",
    "n_docs_files",
    "n_config_files",
    "n_migration_files",
    "n_ui_text_files",
)
COMMIT_HISTORY_FEATURES = (
    "author_commits_30d",
    "author_commits_90d",
    "author_known_defects",
    "author_defect_rate",
    "file_changes_max",
    "file_changes_mean",
    "file_defects_max",
    "file_defects_mean",
    "file_authors_max",
    "file_authors_mean",
    "file_days_since_defect_min",
    "file_churn_90d_max",
    "file_churn_90d_mean",
    "subsystem_changes_max",
    "subsystem_defects_max",
    "subsystem_defect_rate_max",
    "subsystem_authors_max",
    "subsystem_churn_90d_max",
    "defective_churn_share",
)
# The commit_history features that read defect labels: unknowable without them (an unlabelled table).
DEFECT_HISTORY_FEATURES = (
    "author_known_defects",
    "author_defect_rate",
    "file_defects_max",
    "file_defects_mean",
    "file_days_since_defect_min",
    "subsystem_defects_max",
    "subsystem_defect_rate_max",
    "defective_churn_share",
)
DEPLOYMENT_FEATURES = (
    "n_commits",
    "n_authors",
    "la_sum",
    "ld_sum",
    "nf_sum",
    "entropy_max",
    "fix_share",
    "min_author_exp",
    "touches_migration",
    "touches_config",
    "hours_since_previous_deploy",
    "strategy_canary",
    "strategy_blue_green",
    "is_production",
    "hour_of_day",
    "weekday",
    "deploys_7d",
    "deploys_30d",
    "failed_deploys_7d",
    "failed_deploys_30d",
    "incidents_30d",
    "hours_since_last_incident",
)

# The change_risk_v1 feature service, in its order: the element order of its packed online vector.
CHANGE_RISK_V1 = (*COMMIT_CHANGE_FEATURES, *COMMIT_HISTORY_FEATURES)
# change_risk_v2: v1 and the code of the change (lists of lines, the message), the model's input in order.
# Its feature service also serves `added_where`, the place of each added line, for line-level explanations.
CHANGE_RISK_V2 = (*CHANGE_RISK_V1, *CODE_COLUMNS)
ADDED_WHERE = "added_where"
COMMIT_CODE_FEATURES = (*CODE_COLUMNS, ADDED_WHERE)
SERVICE_HEALTH_FEATURES = DEPLOYMENT_FEATURES[-6:]
AUTHOR_HISTORY_FEATURES = (
    "author_exp", "author_commits_30d_now", "author_commits_90d_now", "author_known_defects_now",
    "author_defect_rate_now",
)  # fmt: skip
FILE_HISTORY_FEATURES = (
    "file_changes",
    "file_defects",
    "file_authors",
    "file_last_defect_epoch",
    "file_churn_90d",
)


@dataclass(slots=True)
class _Track:
    """History of one file, subsystem or author: change times, churn, authors, known defects."""

    times: list[pd.Timestamp] = field(default_factory=list)
    churn: list[int] = field(default_factory=list)
    authors: set[str] = field(default_factory=set)
    defects: int = 0
    last_defect_at: pd.Timestamp | None = None

    def churn_since(self, since: pd.Timestamp) -> int:
        start = bisect.bisect_left(self.times, since)
        return int(sum(self.churn[start:]))

    def count_since(self, since: pd.Timestamp) -> int:
        return len(self.times) - bisect.bisect_left(self.times, since)


@dataclass(frozen=True, slots=True)
class ChangedFile:
    """A file a change touches, as the history features read it (the files table's columns of the same
    names; rows of that table serve as well)."""

    path: str
    old_path: str | None
    change_type: str
    la: int
    ld: int
    subsystem: str


def _known_defect_events(commits: pd.DataFrame) -> list[tuple[pd.Timestamp, int, str]]:
    """(time of the first fix, tie-break, inducing sha) of each labelled defect whose fix is in `commits`,
    as a heap: a defect becomes known when its first fix lands."""
    events: list[tuple[pd.Timestamp, int, str]] = []
    if "fixed_by" in commits.columns:
        at = dict(zip(commits["sha"], commits["committed_at"], strict=True))
        for sha, label, fixes in zip(
            commits["sha"], commits["bug_inducing"], commits["fixed_by"], strict=True
        ):
            fixed_at = [at[f] for f in (fixes if fixes is not None else []) if f in at]
            if label is True and fixed_at:
                heapq.heappush(events, (min(fixed_at), len(events), sha))
    return events


class CommitHistory:
    """The author, file and subsystem histories of one repository while its commits are replayed in
    point-in-time order, a labelled defect credited to what its commit touched once its first fix lands.
    The one definition of the commit_history features: the feature build reads them before each mined
    commit (`commit_tables`), the scoring of an unmined change after the whole mined history
    (`commit_history_as_of`)."""

    def __init__(self, commits: pd.DataFrame) -> None:
        """`commits`: the mined commits table (labelled: `bug_inducing`, `fixed_by`; unlabelled commits
        have no known defects); only the labels are read here, `record` replays the commits."""
        self._events = _known_defect_events(commits)
        self._files: dict[str, _Track] = {}
        self._subsystems: dict[str, _Track] = {}
        self._authors: dict[str, _Track] = {}
        self._touched_by: dict[str, list[_Track]] = {}  # commit → tracks to credit when its defect is known

    def advance(self, now: pd.Timestamp) -> None:
        """Credit the defects whose first fix landed strictly before `now`."""
        while self._events and self._events[0][0] < now:
            fixed_at, _, inducing = heapq.heappop(self._events)
            for track in self._touched_by.get(inducing, ()):
                track.defects += 1
                track.last_defect_at = fixed_at

    def features(self, author_id: str, is_bot: bool, rows: Sequence[Any], now: pd.Timestamp) -> tuple:
        """The COMMIT_HISTORY_FEATURES, in order, of a change by `author_id` touching `rows` (ChangedFile
        or rows of the files table) at `now`, from what was recorded; nothing is recorded."""
        author = _Track() if is_bot else self._authors.get(author_id) or _Track()
        ftracks = [self._files.get(_old_path(r)) or _Track() for r in rows]
        stracks = [self._subsystems.get(s) or _Track() for s in {r.subsystem for r in rows}]
        return _commit_history(rows, ftracks, stracks, author, now)

    def record(
        self, sha: str, author_id: str, is_bot: bool, churn: int, rows: Sequence[Any], now: pd.Timestamp
    ) -> tuple[list[_Track], _Track | None]:
        """Record a commit in every history it belongs to; returns the tracks of its files (in the order
        of `rows`) and of its author (None for a bot) after it."""
        credited: list[_Track] = []
        file_tracks: list[_Track] = []
        for r in rows:
            old = _old_path(r)
            track = self._files.pop(old) if old in self._files else _Track()
            if r.change_type != "DELETE":
                self._files[r.path] = track
            _record(track, now, r.la + r.ld, author_id, is_bot)
            credited.append(track)
            file_tracks.append(track)
        for s in {r.subsystem for r in rows}:
            track = self._subsystems.setdefault(s, _Track())
            _record(track, now, sum(r.la + r.ld for r in rows if r.subsystem == s), author_id, is_bot)
            credited.append(track)
        author = None
        if not is_bot:
            author = self._authors.setdefault(author_id, _Track())
            _record(author, now, churn, author_id, False)
            credited.append(author)
        self._touched_by[sha] = credited
        return file_tracks, author


def _old_path(row: Any) -> str:
    """Where a file's history was before this change (the old path of a rename)."""
    return row.old_path if row.change_type == "RENAME" and row.old_path else row.path


def _files_by_commit(files: pd.DataFrame) -> dict[str, list[Any]]:
    """Rows of the files table by sha (itertuples: attributes path, old_path, change_type, la, ld,
    subsystem, ...)."""
    files_of: dict[str, list[Any]] = {}
    for row in files.itertuples(index=False):
        files_of.setdefault(row.sha, []).append(row)
    return files_of


def commit_history_as_of(commits: pd.DataFrame, files: pd.DataFrame, at: pd.Timestamp) -> CommitHistory:
    """The history after every commit of the mined tables, replayed in their point-in-time order (`seq`),
    with the defects known before `at` credited: what `commit_tables` holds before a commit at `at`
    that comes after all of them."""
    history = CommitHistory(commits)
    files_of = _files_by_commit(files)
    for c in commits.sort_values("seq").itertuples(index=False):
        history.advance(c.committed_at)
        history.record(
            c.sha, c.author_id, c.is_bot, int(c.la + c.ld), files_of.get(c.sha, []), c.committed_at
        )
    history.advance(at)
    return history


def commit_tables(commits: pd.DataFrame, files: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """commit_change, commit_history, author_history and file_history of one repository's mined tables
    (labelled commits: `bug_inducing`, `fixed_by`; unlabelled commits have no known defects)."""
    commits = commits.sort_values("seq").reset_index(drop=True)
    files_of = _files_by_commit(files)
    state = CommitHistory(commits)
    change_rows, history_rows, author_rows, file_rows = [], [], [], []
    repo = commits["repo"].iloc[0] if len(commits) else ""
    for c in commits.itertuples(index=False):
        now = c.committed_at
        state.advance(now)
        rows = files_of.get(c.sha, [])
        history_rows.append((c.repo, c.sha, now, *state.features(c.author_id, c.is_bot, rows, now)))
        change_rows.append(_commit_change(c, rows))
        file_tracks, author = state.record(c.sha, c.author_id, c.is_bot, int(c.la + c.ld), rows, now)
        for r, track in zip(rows, file_tracks, strict=True):
            file_rows.append(
                (
                    repo,
                    r.path,
                    now,
                    len(track.times),
                    track.defects,
                    len(track.authors),
                    _epoch(track.last_defect_at),
                    track.churn_since(now - 90 * DAY),
                )
            )
        if author is not None:
            author_rows.append(
                (
                    c.author_id,
                    now,
                    len(author.times),
                    author.count_since(now - 30 * DAY),
                    author.count_since(now - 90 * DAY),
                    author.defects,
                    author.defects / len(author.times),
                )
            )
    change = pd.DataFrame(change_rows)
    history = pd.DataFrame(history_rows, columns=["repo", "sha", "committed_at", *COMMIT_HISTORY_FEATURES])
    authors = pd.DataFrame(author_rows, columns=["author_id", "event_at", *AUTHOR_HISTORY_FEATURES])
    file_history = pd.DataFrame(file_rows, columns=["repo", "path", "event_at", *FILE_HISTORY_FEATURES])
    vector = change[["repo", "sha", "committed_at"]].copy()
    both = change.merge(history, on=["repo", "sha", "committed_at"])
    vector["change_risk_v1"] = list(both[list(CHANGE_RISK_V1)].to_numpy(dtype=float))
    return {
        "commit_change": change,
        "commit_history": history,
        "change_risk_v1_vector": vector,
        "author_history": _last_per_key(authors, ["author_id", "event_at"]),
        "file_history": _last_per_key(file_history, ["repo", "path", "event_at"]),
    }


def commit_code_table(diffs: pd.DataFrame) -> pd.DataFrame:
    """The commit_code source of one repository's diffs table: entity keys, event time, and the code
    columns as lists of str (lines) and str (message)."""
    return diffs[["repo", "sha", "committed_at", *COMMIT_CODE_FEATURES]].reset_index(drop=True)


def _record(track: _Track, now: pd.Timestamp, churn: int, author: str, is_bot: bool) -> None:
    track.times.append(now)
    track.churn.append(int(churn))
    if not is_bot:
        track.authors.add(author)


def _epoch(ts: pd.Timestamp | None) -> float:
    return float("nan") if ts is None else ts.timestamp()


def _last_per_key(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """One row per entity and timestamp (the last state when several events share a second)."""
    return frame.drop_duplicates(key, keep="last").reset_index(drop=True)


def change_features(metrics: Mapping[str, Any], change_kind: str, files: Iterable[Any]) -> dict[str, float]:
    """The COMMIT_CHANGE_FEATURES of one change: its Kamei metrics, change-kind flags and file-type
    counts (`files`: anything with the FILE_FLAGS attributes, rows of the files table or FileKinds). The
    feature build and the scoring of a change that is not mined yet both call it."""
    files = list(files)
    out = {metric: float(metrics[metric]) for metric in KAMEI_METRICS}
    for kind in CHANGE_KINDS:
        out[f"kind_{kind}"] = float(change_kind == kind)
    for flag in FILE_FLAGS:
        out[f"n_{flag.removeprefix('is_')}_files"] = float(sum(bool(getattr(r, flag)) for r in files))
    return out


def _commit_change(c, rows) -> dict:
    metrics = {metric: getattr(c, metric) for metric in KAMEI_METRICS}
    return {
        "repo": c.repo,
        "sha": c.sha,
        "committed_at": c.committed_at,
        **change_features(metrics, c.change_kind, rows),
    }


def _commit_history(
    rows: Sequence[Any], ftracks: list[_Track], stracks: list[_Track], author: _Track, now: pd.Timestamp
) -> tuple:
    since90, since30 = now - 90 * DAY, now - 30 * DAY
    exp = len(author.times)

    def stats(values: list[float]) -> tuple[float, float]:
        return (max(values), sum(values) / len(values)) if values else (0.0, 0.0)

    changes = stats([len(t.times) for t in ftracks])
    defects = stats([t.defects for t in ftracks])
    authors = stats([len(t.authors) for t in ftracks])
    churn90 = stats([t.churn_since(since90) for t in ftracks])
    since_defect = [(now - t.last_defect_at) / DAY for t in ftracks if t.last_defect_at is not None]
    churn = [r.la + r.ld for r in rows]
    defective = sum(ch for ch, t in zip(churn, ftracks, strict=True) if t.defects > 0)
    return (
        float(author.count_since(since30)),
        float(author.count_since(since90)),
        float(author.defects),
        author.defects / exp if exp else 0.0,
        *changes,
        *defects,
        *authors,
        min(since_defect) if since_defect else math.nan,
        *churn90,
        float(max((len(t.times) for t in stracks), default=0)),
        float(max((t.defects for t in stracks), default=0)),
        max((t.defects / len(t.times) for t in stracks if t.times), default=0.0),
        float(max((len(t.authors) for t in stracks), default=0)),
        float(max((t.churn_since(since90) for t in stracks), default=0)),
        defective / sum(churn) if sum(churn) else 0.0,
    )


# The commit_change features of its commits that a deployment's shipped features read (with `author_id`).
SHIPPED_COMMIT_FEATURES = ("la", "ld", "nf", "entropy", "fix", "exp", "n_migration_files", "n_config_files")


def shipped_change_features(commits: pd.DataFrame) -> dict[str, float]:
    """What a deployment ships, from the change features of its commits (columns la, ld, nf, entropy,
    fix, exp, n_migration_files, n_config_files, and author_id when known). Used offline by the
    feature build and online by the risk API, so both compute the same thing."""
    n = len(commits)

    def column(name: str) -> pd.Series:
        return (
            commits[name].astype(float) if name in commits.columns else pd.Series(np.nan, index=commits.index)
        )

    return {
        "n_commits": float(n),
        "n_authors": float(commits["author_id"].nunique()) if "author_id" in commits.columns else math.nan,
        "la_sum": float(column("la").sum()),
        "ld_sum": float(column("ld").sum()),
        "nf_sum": float(column("nf").sum()),
        "entropy_max": float(column("entropy").max()) if n else 0.0,
        "fix_share": float(column("fix").mean()) if n else 0.0,
        "min_author_exp": float(column("exp").min()) if n else math.nan,
        "touches_migration": float((column("n_migration_files") > 0).any()),
        "touches_config": float((column("n_config_files") > 0).any()),
    }


def release_features(strategy: str | None, environment: str, at: pd.Timestamp) -> dict[str, float]:
    return {
        "strategy_canary": float(strategy == "canary"),
        "strategy_blue_green": float(strategy == "blue-green"),
        "is_production": float(environment in ("production", "prod")),
        "hour_of_day": float(at.hour),
        "weekday": float(at.weekday()),
    }


def known_failure_times(deployments: pd.DataFrame, incidents: pd.DataFrame | None) -> pd.Series:
    """When each deployment's failure became known (NaT for one that did not fail): at its end for a
    failed outcome, at the incident's start for a failure by incident (`failure_reason` "incident ID")."""
    incidents = incidents if incidents is not None else pd.DataFrame(columns=["incident_id", "started_at"])
    incident_start = dict(zip(incidents.get("incident_id", []), incidents.get("started_at", []), strict=True))
    known: list[pd.Timestamp | None] = []
    for failed, reason, started, finished in zip(
        deployments["failed"], deployments["failure_reason"], deployments["started_at"],
        deployments["finished_at"], strict=True,
    ):  # fmt: skip
        if not failed:
            known.append(None)
        elif str(reason).startswith("incident "):
            known.append(incident_start.get(str(reason).removeprefix("incident ")))
        else:
            known.append(finished if pd.notna(finished) else started)
    return pd.Series(pd.to_datetime(known, utc=True), index=deployments.index, dtype="datetime64[ns, UTC]")


@dataclass(frozen=True)
class ServiceTimeline:
    """A service's delivery history as unix seconds, for features as of any time: every deployment's
    start, environment and known failure time (NaN: never failed), and incident starts, ascending."""

    starts: np.ndarray
    environments: np.ndarray
    failed_at: np.ndarray
    incident_starts: np.ndarray

    @classmethod
    def of(cls, deployments: pd.DataFrame, incidents: pd.DataFrame | None, service: str) -> ServiceTimeline:
        """`deployments` with a `known_failed_at` column (see `known_failure_times`)."""
        mine = deployments[deployments["service"] == service].sort_values("started_at", kind="stable")
        incident_times = (
            incidents.loc[incidents["service"] == service, "started_at"]
            if incidents is not None
            else pd.Series([], dtype="datetime64[ns, UTC]")
        )
        return cls(
            starts=unix_seconds(mine["started_at"]),
            environments=mine["environment"].to_numpy(dtype=object),
            failed_at=unix_seconds(mine["known_failed_at"]),
            incident_starts=np.sort(unix_seconds(incident_times)),
        )


def timeline_features(timeline: ServiceTimeline, environment: str, t: float) -> dict[str, float]:
    """hours_since_previous_deploy (to the same environment) and the service's health, as of unix time
    `t`, from strictly earlier deployments and incidents only; windows are [t - w, t)."""
    before = timeline.starts < t
    earlier_here = timeline.starts[before & (timeline.environments == environment)]
    known = before & (timeline.failed_at < t)  # NaN (never failed) compares False
    in7, in30 = timeline.starts >= t - 7 * 86_400, timeline.starts >= t - 30 * 86_400
    incidents = timeline.incident_starts
    n_incidents = int(np.searchsorted(incidents, t))
    recent_incidents = n_incidents - int(np.searchsorted(incidents, t - 30 * 86_400))
    return {
        "hours_since_previous_deploy": (t - earlier_here.max()) / 3600 if len(earlier_here) else math.nan,
        "deploys_7d": float((before & in7).sum()),
        "deploys_30d": float((before & in30).sum()),
        "failed_deploys_7d": float((known & in7).sum()),
        "failed_deploys_30d": float((known & in30).sum()),
        "incidents_30d": float(recent_incidents),
        "hours_since_last_incident": (t - incidents[n_incidents - 1]) / 3600 if n_incidents else math.nan,
    }


def deployment_features(
    shipped: pd.DataFrame,
    strategy: str | None,
    environment: str,
    at: pd.Timestamp,
    timeline: ServiceTimeline,
) -> dict[str, float]:
    """The DEPLOYMENT_FEATURES of a deployment starting at `at`: what it ships (`shipped`: its commits'
    change features and author_id, see `shipped_change_features`), how, and the service's history
    before it. The one definition of the vector: the feature build and the risk API both call it."""
    values = {
        **shipped_change_features(shipped),
        **release_features(strategy, environment, at),
        **timeline_features(timeline, environment, at.timestamp()),
    }
    return {name: values[name] for name in DEPLOYMENT_FEATURES}


def shipped_commit_table(commits: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
    """Per commit (index sha): author_id and the SHIPPED_COMMIT_FEATURES, from the mined tables (the
    same values as the commit_change feature view)."""
    info = commits.set_index("sha")
    flags = files.groupby("sha")[["is_migration", "is_config"]].sum()
    info = info.assign(
        fix=info["is_fix"].astype(float),
        n_migration_files=flags["is_migration"].reindex(info.index).fillna(0),
        n_config_files=flags["is_config"].reindex(info.index).fillna(0),
    )
    return info[["author_id", *SHIPPED_COMMIT_FEATURES]]


def deployment_tables(
    deployments: pd.DataFrame, incidents: pd.DataFrame | None, commits: pd.DataFrame, files: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """deployment_change (features of each deployment as of its start) and service_health."""
    info = shipped_commit_table(commits, files)
    deployments = deployments.sort_values("started_at", kind="stable").reset_index(drop=True)
    deployments["known_failed_at"] = known_failure_times(deployments, incidents)
    timelines = {s: ServiceTimeline.of(deployments, incidents, s) for s in deployments["service"].unique()}
    rows, health = [], []
    for d in deployments.itertuples(index=False):
        shipped = [s for s in d.shipped if s in info.index]
        values = {
            "deploy_id": d.deploy_id,
            "service": d.service,
            "started_at": d.started_at,
            **deployment_features(
                info.loc[shipped], d.strategy, d.environment, d.started_at, timelines[d.service]
            ),
        }
        rows.append(values)
        health.append({"service": d.service, "event_at": d.started_at})
        health[-1].update({k: values[k] for k in SERVICE_HEALTH_FEATURES})
    change = pd.DataFrame(rows, columns=["deploy_id", "service", "started_at", *DEPLOYMENT_FEATURES])
    return {
        "deployment_change": change,
        "service_health": _last_per_key(
            pd.DataFrame(health, columns=["service", "event_at", *SERVICE_HEALTH_FEATURES]),
            ["service", "event_at"],
        ),
    }
