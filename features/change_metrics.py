"""The 14 change metrics of Kamei et al. (TSE 2013) for one change, computed point-in-time from a
running history of earlier changes.

Definitions (a change = one non-merge commit, diffed against its first parent; history = every change
processed before it, i.e. with an earlier point-in-time, see `pipelines.mine`):

Size
- `la`, `ld`: lines added / deleted, summed over files (git numstat; binary files count 0).
- `lt`: lines of code in the modified files before the change, summed over files. Kept per path from
  history (sum of `la - ld` of earlier changes, never below 0) instead of reading blobs; added files
  count 0, binary files count 0, a renamed file counts the lines of its old path.
Diffusion
- `ns`: distinct subsystems (root directories; root-level files form one) of the modified files.
- `nd`: distinct directories of the modified files.
- `nf`: modified files (added, deleted, modified, renamed and binary files all count).
- `entropy`: Shannon entropy (base 2) of the distribution of changed lines (`la + ld`) over the files,
  not normalised (as in the public ISSTA'21 benchmark data; divide by log2(nf) for Kamei's normalised form).
  Files with no changed lines (pure renames, binaries) do not contribute.
Purpose
- `fix`: the change is a bug fix (keyword rule, `features.classify.FIX_PATTERN`).
History (of the modified files; a renamed file carries the history of its old path, a deleted file's
history ends, so a path added again starts afresh)
- `ndev`: distinct developers (bots excluded) who changed the modified files before.
- `age`: mean time in days since the last change of each modified file (files with no history skipped;
  0 when none has history).
- `nuc`: number of distinct earlier changes to the modified files.
Experience (of the author after .mailmap; bots get 0 and never add to anyone's experience)
- `exp`: earlier changes by the author.
- `rexp`: earlier changes weighted by age: a change made n whole years before counts 1 / (n + 1).
- `sexp`: earlier changes by the author that touched any of this change's subsystems.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from features.classify import directory_of, subsystem_of

KAMEI_METRICS: tuple[str, ...] = (
    "ns", "nd", "nf", "entropy", "la", "ld", "lt", "fix", "ndev", "age", "nuc", "exp", "rexp", "sexp",
)  # fmt: skip

ADD, MODIFY, DELETE, RENAME = "ADD", "MODIFY", "DELETE", "RENAME"
CHANGE_TYPES = (ADD, MODIFY, DELETE, RENAME)

_DAY = 86_400.0
_YEAR = 365.25 * _DAY


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file of a diff. `old_path` is set for renames only; binary files have `la = ld = 0`."""

    path: str
    change_type: str
    la: int
    ld: int
    old_path: str | None = None
    is_binary: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """A change to score: its files, who made it, when (unix seconds), and whether it fixes a bug."""

    files: tuple[FileChange, ...]
    author_id: str
    at: float
    is_fix: bool
    is_bot: bool = False


@dataclass(slots=True)
class _FileHistory:
    lines: int = 0
    last_at: float = 0.0
    developers: set[str] = field(default_factory=set)
    changes: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _AuthorHistory:
    times: list[float] = field(default_factory=list)  # ascending: changes are recorded in time order
    by_subsystem: dict[str, set[int]] = field(default_factory=dict)


class ChangeHistory:
    """Per-file and per-author state of every change recorded so far.

    `metrics(change)` reads it (the change itself is not yet part of it: strictly earlier history);
    `record(change)` adds the change. Changes must be recorded in point-in-time order."""

    def __init__(self) -> None:
        self._files: dict[str, _FileHistory] = {}
        self._authors: dict[str, _AuthorHistory] = {}
        self._recorded = 0

    def __len__(self) -> int:
        return self._recorded

    def metrics(self, change: Change) -> dict[str, float | int | bool]:
        files = change.files
        subsystems = {subsystem_of(f.path) for f in files}
        churn = [f.la + f.ld for f in files]
        total = sum(churn)
        entropy = 0.0
        if total > 0:
            entropy = -sum((c / total) * math.log2(c / total) for c in churn if c > 0)
            entropy = abs(entropy)  # -0.0 for a single file
        lt = 0
        ages: list[float] = []
        developers: set[str] = set()
        earlier_changes: set[int] = set()
        for f in files:
            if f.change_type == ADD:
                continue
            history = self._files.get(f.old_path if f.change_type == RENAME and f.old_path else f.path)
            if history is None:
                continue
            lt += history.lines
            ages.append(max(0.0, (change.at - history.last_at) / _DAY))
            developers |= history.developers
            earlier_changes |= history.changes
        exp, rexp, sexp = 0, 0.0, 0
        author = None if change.is_bot else self._authors.get(change.author_id)
        if author is not None:
            exp = len(author.times)
            rexp = _age_weighted_count(author.times, change.at)
            touched = [author.by_subsystem[s] for s in subsystems if s in author.by_subsystem]
            sexp = len(touched[0]) if len(touched) == 1 else len(set().union(*touched))
        return {
            "ns": len(subsystems),
            "nd": len({directory_of(f.path) for f in files}),
            "nf": len(files),
            "entropy": entropy,
            "la": sum(f.la for f in files),
            "ld": sum(f.ld for f in files),
            "lt": lt,
            "fix": change.is_fix,
            "ndev": len(developers),
            "age": sum(ages) / len(ages) if ages else 0.0,
            "nuc": len(earlier_changes),
            "exp": exp,
            "rexp": rexp,
            "sexp": sexp,
        }

    def record(self, change: Change) -> None:
        ordinal = self._recorded
        self._recorded += 1
        for f in change.files:
            if f.change_type == RENAME and f.old_path:
                history = self._files.pop(f.old_path, None) or _FileHistory()
                self._files[f.path] = history
            elif f.change_type == DELETE:
                self._files.pop(f.path, None)
                continue
            elif f.change_type == ADD:
                history = self._files[f.path] = _FileHistory()
            else:
                history = self._files.setdefault(f.path, _FileHistory())
            history.lines = max(0, history.lines + f.la - f.ld)
            history.last_at = change.at
            history.changes.add(ordinal)
            if not change.is_bot:
                history.developers.add(change.author_id)
        if change.is_bot:
            return
        author = self._authors.setdefault(change.author_id, _AuthorHistory())
        author.times.append(change.at)
        for s in {subsystem_of(f.path) for f in change.files}:
            author.by_subsystem.setdefault(s, set()).add(ordinal)

    def metrics_then_record(self, change: Change) -> dict[str, float | int | bool]:
        values = self.metrics(change)
        self.record(change)
        return values


def _age_weighted_count(times: list[float], at: float) -> float:
    """Sum over earlier changes of 1 / (n + 1), n = whole years between that change and `at`.
    `times` is ascending, so each year's count is one bisection: O(years · log changes)."""
    total = 0.0
    upper = bisect.bisect_right(times, at)
    years = 0
    while upper > 0:
        lower = bisect.bisect_right(times, at - (years + 1) * _YEAR, 0, upper)
        total += (upper - lower) / (years + 1)
        upper = lower
        years += 1
    return total


def change_metrics(change: Change, history: ChangeHistory | None = None) -> dict[str, float | int | bool]:
    """The 14 metrics of a change that is not mined yet, against `history` (empty when None)."""
    return (history or ChangeHistory()).metrics(change)
