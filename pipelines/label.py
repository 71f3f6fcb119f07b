"""`awo label`: bug-inducing labels for the mined commits of one repository (R-SZZ, see features.labels)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.errors import AwoError, BadTable
from features.labels import Candidate, Verdict, issue_ids, label_commits, select_inducing
from features.mining.gitlog import Repository
from features.mining.szz import find_candidates
from features.settings import Settings
from features.tables import (
    CANDIDATES_FILE,
    CANDIDATES_SCHEMA,
    COMMITS_FILE,
    COMMITS_SCHEMA,
    LABELLED_COMMITS_SCHEMA,
    exclusive,
    read_table,
    to_arrow,
    write_tables,
)


@dataclass
class LabelResult:
    out_dir: Path
    fixes: int = 0
    fixes_with_candidates: int = 0
    candidates: int = 0
    bug_inducing: int = 0
    clean: int = 0
    unknown: int = 0
    seconds: float = 0.0
    verdicts: list[Verdict] = field(default_factory=list)


def load_commits(out_dir: Path) -> pd.DataFrame:
    commits = read_table(out_dir / COMMITS_FILE, COMMITS_SCHEMA)
    if commits is None:
        raise AwoError(f"{out_dir / COMMITS_FILE} does not exist: run `awo mine REPO --data {out_dir}` first")
    return commits


def read_issue_dates(path: Path) -> dict[str, pd.Timestamp]:
    """issues.csv: `issue_id, opened_at` (ISO 8601; naive times are UTC)."""
    try:
        frame = pd.read_csv(path, dtype={"issue_id": str})
    except FileNotFoundError:
        raise AwoError(f"issues file {path} does not exist") from None
    missing = {"issue_id", "opened_at"} - set(frame.columns)
    if missing:
        raise BadTable(f"{path}: missing columns {sorted(missing)} (expected issue_id, opened_at)")
    opened = pd.to_datetime(frame["opened_at"], utc=True, errors="coerce", format="ISO8601")
    bad = opened.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise BadTable(
            f"{path}, line {row + 2}, field opened_at: not a date: {frame.loc[row, 'opened_at']!r}"
        )
    ids = frame["issue_id"].astype(str).str.lstrip("#").str.extract(r"(\d+)$")[0]
    return dict(zip(ids, opened, strict=True))


def fix_issue_dates(
    commits: pd.DataFrame, messages: dict[str, str], opened: dict[str, pd.Timestamp]
) -> dict[str, pd.Timestamp]:
    """For each fix referencing issues with a known open date, the earliest such date."""
    dates: dict[str, pd.Timestamp] = {}
    for sha in commits.loc[commits["is_fix"], "sha"]:
        known = [opened[i] for i in issue_ids(messages.get(sha, "")) if i in opened]
        if known:
            dates[sha] = min(known)
    return dates


def candidates_for(
    repo_path: Path, commits: pd.DataFrame, fix_shas: list[str], workers: int
) -> tuple[Repository, list[Candidate]]:
    repository = Repository(repo_path)
    parents = dict(zip(commits["sha"], commits["parents"].map(list), strict=True))
    return repository, find_candidates(repository, fix_shas, parents, workers)


def judge(
    commits: pd.DataFrame,
    candidates: list[Candidate],
    repository: Repository,
    issues: Path | None,
) -> list[Verdict]:
    seq = dict(zip(commits["sha"], commits["seq"], strict=True))
    committed = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    issue_opened: dict[str, pd.Timestamp] = {}
    if issues is not None:
        fixes = list(commits.loc[commits["is_fix"], "sha"])
        issue_opened = fix_issue_dates(commits, repository.messages(fixes), read_issue_dates(issues))
    foreign = {c.candidate_sha for c in candidates} - set(seq)
    merges = {sha for sha in foreign if len(repository.parents_of(sha)) > 1} if foreign else set()
    return select_inducing(candidates, seq, committed, merges, issue_opened)


def label_repository(
    repo_path: Path,
    settings: Settings,
    out_dir: Path | None = None,
    issues: Path | None = None,
    maturity_days: float = 180.0,
    workers: int = 2,
) -> LabelResult:
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else settings.repo_data_dir(Repository(repo_path).name)
    with exclusive(out_dir):
        commits = load_commits(out_dir)
        fixes = list(commits.loc[commits["is_fix"], "sha"])
        repository, candidates = candidates_for(repo_path, commits, fixes, workers)
        verdicts = judge(commits, candidates, repository, issues)
        labelled = label_commits(commits, verdicts, maturity_days)
        table = pd.DataFrame(
            {
                "fix_sha": [v.fix_sha for v in verdicts],
                "candidate_sha": [v.candidate_sha for v in verdicts],
                "kept": [v.kept for v in verdicts],
                "reason": [v.reason for v in verdicts],
                "lines": [v.lines for v in verdicts],
            }
        )
        write_tables(
            out_dir,
            {
                CANDIDATES_FILE: to_arrow(table, CANDIDATES_SCHEMA, CANDIDATES_FILE),
                COMMITS_FILE: to_arrow(labelled, LABELLED_COMMITS_SCHEMA, COMMITS_FILE),
            },
        )
    label = labelled["bug_inducing"]
    return LabelResult(
        out_dir=out_dir,
        fixes=len(fixes),
        fixes_with_candidates=len({v.fix_sha for v in verdicts}),
        candidates=len(verdicts),
        bug_inducing=int((label == True).sum()),  # noqa: E712 - nullable boolean
        clean=int((label == False).sum()),  # noqa: E712
        unknown=int(label.isna().sum()),
        seconds=time.perf_counter() - started,
        verdicts=verdicts,
    )


def audit_fix(
    repo_path: Path, out_dir: Path, fix: str, issues: Path | None, workers: int = 2
) -> pd.DataFrame:
    """Every candidate of one fix commit with the reason it was kept or dropped."""
    commits = load_commits(out_dir)
    matches = commits.loc[commits["sha"].str.startswith(fix), "sha"]
    if len(matches) != 1:
        raise AwoError(f"fix {fix!r} matches {len(matches)} mined commits; give more of the sha")
    sha = matches.iloc[0]
    repository, candidates = candidates_for(repo_path, commits, [sha], workers)
    verdicts = judge(commits, candidates, repository, issues)
    at = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    subject = dict(zip(commits["sha"], commits["message_subject"], strict=True))
    paths: dict[str, set[str]] = {}
    for c in candidates:
        paths.setdefault(c.candidate_sha, set()).add(c.path)
    return _frame(verdicts, at, subject, paths, sha)


def _frame(verdicts, at, subject, paths, sha) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {
                "candidate": v.candidate_sha[:12],
                "committed_at": at.get(v.candidate_sha),
                "lines": v.lines,
                "paths": ", ".join(sorted(paths.get(v.candidate_sha, ()))),
                "subject": subject.get(v.candidate_sha, ""),
                "verdict": v.reason,
            }
            for v in verdicts
        ],
        columns=["candidate", "committed_at", "lines", "paths", "subject", "verdict"],
    )
    frame.attrs["fix"] = sha
    return frame
