"""Bug-inducing labels from SZZ candidates, as pure functions of data.

R-SZZ (Rosa et al., ICSE 2021): of the commits that last touched the lines a fix removed or changed, keep
only the most recent one — the most precise SZZ variant against a developer-informed oracle. With the
issue-date filter, candidates committed after the fixed issue was opened are dropped first (they cannot
have caused a bug already reported). A fix that git could not read in full is recorded with its failure and
labels nothing positive: R-SZZ's choice of the most recent candidate is only right when every line was
blamed. The newest commit its readable part blamed is unknown (null), not clean, unless another fix keeps
it; the older ones are dropped as R-SZZ drops them, whatever the unread lines named.

Label maturity: defects surface late, so a commit younger than the maturity window (measured back from the
newest commit) whose label is not positive is unknown (null), not clean; training skips it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

ISSUE_REFERENCE = re.compile(r"(?:#|\b[A-Z][A-Z0-9]+-)(\d+)\b")
KEPT = "kept: most recent candidate (R-SZZ)"
# The newest candidate of a fix git could not read in full: it may or may not be the one R-SZZ would keep.
UNREAD_FIX = "unknown: the fix could not be read in full"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One blamed commit for one fix: the line it wrote that the fix removed or changed."""

    fix_sha: str
    candidate_sha: str
    path: str
    line: int


@dataclass(frozen=True, slots=True)
class FixFailure:
    """Part of a fix that git could not read: its diff (no path), or the blame of one of its files at its
    parent. `kind` is a short stable name to count by; `detail` is git's own message."""

    fix_sha: str
    path: str | None
    kind: str
    detail: str
    lines: int = 0  # removed lines that could not be blamed

    @property
    def reason(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"failed ({self.kind}): {where}{self.detail}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why one candidate of one fix was kept or dropped; `candidate_sha` is None on the row of a failure."""

    fix_sha: str
    candidate_sha: str | None
    kept: bool
    reason: str
    lines: int

    @property
    def unknown(self) -> bool:
        """The newest candidate of a fix that could not be read in full: it may be the one R-SZZ keeps."""
        return self.reason == UNREAD_FIX


def issue_ids(message: str) -> list[str]:
    """Issue numbers a commit message references (`#123`, `PROJ-123`)."""
    return ISSUE_REFERENCE.findall(message)


def fix_issue_dates(
    fix_shas: list[str], messages: dict[str, str], opened: dict[str, pd.Timestamp]
) -> dict[str, pd.Timestamp]:
    """For each fix referencing issues with a known open date, the earliest such date. Only issue ids are
    read from a message, never the commits it names: the developer-informed oracle is built from those."""
    dates: dict[str, pd.Timestamp] = {}
    for sha in fix_shas:
        known = [opened[i] for i in issue_ids(messages.get(sha, "")) if i in opened]
        if known:
            dates[sha] = min(known)
    return dates


def select_inducing(
    candidates: list[Candidate],
    seq: dict[str, int],
    committed_at: dict[str, pd.Timestamp],
    is_merge: set[str] | None = None,
    issue_opened: dict[str, pd.Timestamp] | None = None,
    failures: list[FixFailure] | None = None,
) -> list[Verdict]:
    """Keep or drop every candidate of every fix, with the reason, and one row per failure. `seq` is the
    point-in-time order of the mined commits; `issue_opened` maps a fix sha to the earliest open date of
    the issues it references; a fix with `failures` keeps none of its candidates, and the newest that
    passes the filters is marked unknown (`Verdict.unknown`)."""
    is_merge = is_merge or set()
    issue_opened = issue_opened or {}
    by_fix: dict[str, dict[str, int]] = {}
    for c in candidates:
        by_fix.setdefault(c.fix_sha, {})
        by_fix[c.fix_sha][c.candidate_sha] = by_fix[c.fix_sha].get(c.candidate_sha, 0) + 1
    failed: dict[str, list[FixFailure]] = {}
    for f in failures or []:
        failed.setdefault(f.fix_sha, []).append(f)
    verdicts: list[Verdict] = []
    for fix in dict.fromkeys([*by_fix, *failed]):
        counted = by_fix.get(fix, {})
        verdicts.extend(Verdict(fix, None, False, f.reason, f.lines) for f in failed.get(fix, []))
        alive: list[str] = []
        for sha, lines in counted.items():
            if sha == fix:
                reason = "dropped: the fix itself"
            elif sha in is_merge:
                reason = "dropped: a merge commit"
            elif sha not in seq:
                reason = "dropped: not a mined commit of this branch"
            elif fix in seq and seq[sha] >= seq[fix]:
                reason = "dropped: not earlier than the fix"
            elif fix in issue_opened and committed_at[sha] > issue_opened[fix]:
                reason = f"dropped: committed after the issue was opened ({issue_opened[fix]:%Y-%m-%d})"
            else:
                alive.append(sha)
                continue
            verdicts.append(Verdict(fix, sha, False, reason, lines))
        if alive:
            newest = max(alive, key=lambda s: seq[s])
            for sha in alive:
                if sha != newest:
                    reason = "dropped: older candidate (R-SZZ)"
                elif fix in failed:
                    # The unread lines can only add candidates: the newest read one may or may not be
                    # R-SZZ's pick, so it is neither kept nor known clean; the older ones are dropped anyway.
                    reason = UNREAD_FIX
                else:
                    reason = KEPT
                verdicts.append(Verdict(fix, sha, reason == KEPT, reason, counted[sha]))
    return verdicts


def label_commits(
    commits: pd.DataFrame, verdicts: list[Verdict], maturity_days: float = 180.0
) -> pd.DataFrame:
    """`commits` with `bug_inducing` (nullable boolean), `fixed_by` (list of fix shas) and
    `fix_delay_days` (days from the commit to its first fix) added or replaced. A commit that is not
    positive is unknown (null) when it is young, or when it is the newest candidate of a fix git could not
    read in full."""
    fixes: dict[str, list[str]] = {}
    unread: set[str] = set()
    for v in verdicts:
        if v.kept and v.candidate_sha is not None:
            fixes.setdefault(v.candidate_sha, []).append(v.fix_sha)
        elif v.unknown and v.candidate_sha is not None:
            unread.add(v.candidate_sha)
    at = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    out = commits.drop(columns=["bug_inducing", "fixed_by", "fix_delay_days"], errors="ignore").copy()
    fixed_by = [
        sorted(set(fixes.get(sha, [])), key=lambda f: at.get(f, pd.Timestamp.max)) for sha in out["sha"]
    ]
    positive = pd.Series([bool(f) for f in fixed_by], index=out.index)
    newest = out["committed_at"].max()
    immature = out["committed_at"] > newest - pd.Timedelta(days=maturity_days)
    label = positive.astype("boolean")
    # A missing signal is unknown, not clean: too young to have been fixed, or blamed by an unread fix.
    unknown = immature | out["sha"].isin(unread)
    label[unknown & ~positive] = pd.NA
    out["bug_inducing"] = label
    out["fixed_by"] = fixed_by
    delays = []
    for sha, fixers in zip(out["sha"], fixed_by, strict=True):
        first = min((at[f] for f in fixers if f in at), default=None)
        delays.append((first - at[sha]).total_seconds() / 86_400 if first is not None else float("nan"))
    out["fix_delay_days"] = delays
    return out


def label_quality(labels: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Precision and recall of positive labels against a ground truth (`sha, bug_inducing, fixed_by`).
    `recall_fixed` counts only true defects that were ever fixed: the ones SZZ can possibly find."""
    joined = labels[["sha", "bug_inducing"]].merge(truth[["sha", "bug_inducing", "fixed_by"]], on="sha",
                                                   suffixes=("", "_true"))  # fmt: skip
    predicted = joined["bug_inducing"].astype("boolean").fillna(False).astype(bool)
    actual = joined["bug_inducing_true"].astype(bool)
    fixed = actual & joined["fixed_by"].map(len).gt(0)
    hits = int((predicted & actual).sum())
    return {
        "labelled_positive": int(predicted.sum()),
        "true_positive": hits,
        "truly_inducing": int(actual.sum()),
        "precision": hits / max(1, int(predicted.sum())),
        "recall": hits / max(1, int(actual.sum())),
        "recall_fixed": int((predicted & fixed).sum()) / max(1, int(fixed.sum())),
        "null_labels": int(joined["bug_inducing"].isna().sum()),
    }
