"""`awo label`: the job that labels the mined commits of one repository with R-SZZ (the algorithm is in
features.mining.szz and features.labels): lock, read the tables, write the labels and verdicts, count."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.errors import AwoError, BadTable
from features.labels import Verdict, label_commits
from features.mining.gitlog import Repository
from features.mining.szz import SzzResult, judge_fixes
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
    # Fixes git could not read in full (they label nothing; each failure is a row of szz_candidates.parquet),
    # and how many fixes failed for each reason ("diff unreadable", "blame failed").
    failed_fixes: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
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


def label_repository(
    repo_path: Path,
    settings: Settings,
    out_dir: Path | None = None,
    issues: Path | None = None,
    maturity_days: float | None = None,
    workers: int = 2,
) -> LabelResult:
    """Label the mined commits of `repo_path` in `out_dir`; labels younger than `maturity_days` (default:
    the `label_maturity_days` setting) stay null unless a fix blamed them."""
    started = time.perf_counter()
    if maturity_days is None:
        maturity_days = settings.label_maturity_days
    out_dir = Path(out_dir) if out_dir else settings.repo_data_dir(Repository(repo_path).name)
    opened = read_issue_dates(issues) if issues is not None else None
    with exclusive(out_dir):
        commits = load_commits(out_dir)
        fixes = list(commits.loc[commits["is_fix"], "sha"])
        szz = judge_fixes(Repository(repo_path), commits, fixes, opened, workers)
        verdicts = szz.verdicts
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
        fixes_with_candidates=len({c.fix_sha for c in szz.candidates}),
        candidates=sum(v.candidate_sha is not None for v in verdicts),
        failed_fixes=len({f.fix_sha for f in szz.failures}),
        failures_by_reason=_failures_by_reason(szz),
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
    opened = read_issue_dates(issues) if issues is not None else None
    szz = judge_fixes(Repository(repo_path), commits, [sha], opened, workers)
    at = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    subject = dict(zip(commits["sha"], commits["message_subject"], strict=True))
    paths: dict[str, set[str]] = {}
    for c in szz.candidates:
        paths.setdefault(c.candidate_sha, set()).add(c.path)
    return _frame(szz.verdicts, at, subject, paths, sha)


def _failures_by_reason(szz: SzzResult) -> dict[str, int]:
    """Number of fixes that failed for each kind of failure (a fix counts once per kind)."""
    return dict(Counter(kind for _, kind in {(f.fix_sha, f.kind) for f in szz.failures}))


def _frame(
    verdicts: list[Verdict],
    at: dict[str, pd.Timestamp],
    subject: dict[str, str],
    paths: dict[str, set[str]],
    sha: str,
) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {
                "candidate": (v.candidate_sha or "")[:12],
                "committed_at": at.get(v.candidate_sha) if v.candidate_sha else None,
                "lines": v.lines,
                "paths": ", ".join(sorted(paths.get(v.candidate_sha, ()))) if v.candidate_sha else "",
                "subject": subject.get(v.candidate_sha, "") if v.candidate_sha else "",
                "verdict": v.reason,
            }
            for v in verdicts
        ],
        columns=["candidate", "committed_at", "lines", "paths", "subject", "verdict"],
    )
    frame.attrs["fix"] = sha
    return frame
