"""SZZ candidates: for each fix commit, the commits that last wrote the lines it removed or changed.

Lines are taken from the fix's diff against its parent with whitespace-only changes ignored (`-w`); blank
lines and comment-only lines (starting with `#`, `//`, `/*`, `*`, `--`, `<!--`, or a docstring quote) are
skipped, and so are test and documentation files (a changed test line is not a defect) unless the fix
changes nothing else. Each remaining line is blamed at the parent with move and copy detection (`git blame
-w -M -C`), so a line moved by a refactor is traced to the commit that wrote it, not to the refactor. A fix
that only adds lines has no candidates (a known limit of every SZZ variant). Submodule pointers (gitlinks,
mode 160000) and binary files have no lines to blame and are skipped. A fix whose source files give no
candidate falls back to its test and documentation files, then to whitespace changed within a line (`-b`,
a space in a string literal): measured on the developer-informed oracle by benchmarks/szz.py. A fix that git
cannot read (its diff, or the blame of one of its files) is recorded as a failure with git's reason, and the
run goes on with the other fixes.

The candidates are judged by R-SZZ (features.labels.select_inducing). Nothing here reads the commits a
message names: the developer-informed oracle the labels are measured against was built from them.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd

from features.classify import file_kind, is_fix_message
from features.errors import UnreadableRepository
from features.labels import Candidate, FixFailure, Verdict, fix_issue_dates, select_inducing
from features.mining.gitlog import Repository

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")
_COMMENT_PREFIXES = ("#", "//", "/*", "*", "--", "<!--", '"""', "'''")
# Header lines that give the old side's mode; a gitlink's "lines" are the commit it points to.
_OLD_MODE_LINES = ("index ", "old mode ", "deleted file mode ")
_GITLINK_MODE = " 160000"
_GIT_MESSAGE = re.compile(r"(?:fatal|error): .*")

# Failure kinds, as counted in a label run's summary.
DIFF_UNREADABLE = "diff unreadable"
BLAME_FAILED = "blame failed"
HISTORY_FAILED = "line history failed"

# Line history: the lines of each hunk widened by git's default diff context, and how many of the newest
# commits that changed them are read (the issue-date filter may have to walk past the newest).
_CONTEXT = 3
_HISTORY_DEPTH = 10
_HISTORY_MARK = "\x1eAWO"


@dataclass(frozen=True, slots=True)
class RemovedLines:
    fix_sha: str
    path: str  # path in the fix's parent
    lines: tuple[int, ...]


def is_meaningful(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(_COMMENT_PREFIXES)


def _file_patches(patch: str) -> Iterator[tuple[str, list[str]]]:
    """(old path, lines from its first hunk header on) of each file of one commit's zero-context patch;
    new files and submodule pointers left out."""
    path: str | None = None
    in_header = False
    is_gitlink = False
    body: list[str] = []
    for text in patch.split("\n"):
        if text.startswith("diff --git "):
            if path is not None:
                yield path, body
            path, body, in_header, is_gitlink = None, [], True, False
        elif not in_header or text.startswith("@@"):
            in_header = False
            body.append(text)
        elif text.startswith(_OLD_MODE_LINES):
            is_gitlink = is_gitlink or text.endswith(_GITLINK_MODE)
        elif text.startswith("--- "):
            old = text[4:]
            path = _old_path(old) if old != "/dev/null" and not is_gitlink else None
    if path is not None:
        yield path, body


def parse_removed_lines(fix_sha: str, patch: str) -> Iterator[RemovedLines]:
    """Removed lines per old path of one commit's zero-context patch (submodule pointers left out)."""
    for path, body in _file_patches(patch):
        old_line = 0
        found: list[int] = []
        for text in body:
            if text.startswith("@@"):
                match = _HUNK.match(text)
                old_line = int(match.group(1)) if match else 0
            elif text.startswith("-"):
                if is_meaningful(text[1:]):
                    found.append(old_line)
                old_line += 1
        if found:
            yield RemovedLines(fix_sha, path, tuple(found))


def parse_insertion_points(fix_sha: str, patch: str) -> Iterator[RemovedLines]:
    """For a patch that only adds lines: the old lines just above and below each insertion, per old path
    (the code the added lines complete)."""
    path: str | None = None
    found: list[int] = []
    for text in patch.split("\n"):
        if text.startswith("diff --git "):
            if path is not None and found:
                yield RemovedLines(fix_sha, path, tuple(sorted(set(found))))
            path, found = None, []
        elif text.startswith("--- ") and path is None and not found:
            old = text[4:]
            path = _old_path(old) if old != "/dev/null" else None
        elif text.startswith("@@"):
            match = _HUNK.match(text)
            if match and match.group(2) == "0":
                after = int(match.group(1))
                found.extend(line for line in (after, after + 1) if line > 0)
    if path is not None and found:
        yield RemovedLines(fix_sha, path, tuple(sorted(set(found))))


@dataclass(frozen=True, slots=True)
class Region:
    """The old lines `start`..`end` one hunk of a fix replaced (a hunk that only inserts: the lines around
    the insertion), and whether it adds or removes a line of code (not blank, not a comment)."""

    fix_sha: str
    path: str  # path in the fix's parent
    start: int
    end: int
    meaningful: bool


def parse_regions(fix_sha: str, patch: str) -> Iterator[Region]:
    """The old-side region of every hunk of one commit's zero-context patch (submodule pointers and new
    files left out)."""
    for path, body in _file_patches(patch):
        hunk: list = []  # [start, end, meaningful] of the open hunk
        for text in body:
            if text.startswith("@@"):
                if hunk:
                    yield Region(fix_sha, path, hunk[0], hunk[1], hunk[2])
                match = _HUNK.match(text)
                start, count = (int(match.group(1)), int(match.group(2) or 1)) if match else (0, 0)
                hunk = [start, start + 1, False] if count == 0 else [start, start + count - 1, False]
            elif hunk and text.startswith(("-", "+")):
                hunk[2] = hunk[2] or is_meaningful(text[1:])
        if hunk:
            yield Region(fix_sha, path, hunk[0], hunk[1], hunk[2])


def widen(start: int, end: int, length: int, context: int = _CONTEXT) -> tuple[int, int] | None:
    """`start`..`end` with `context` lines either side, inside a file of `length` lines (None if empty)."""
    if length < 1:
        return None
    low = min(max(1, start - context), length)
    return low, max(low, min(end + context, length))


def parse_history(text: str) -> list[tuple[str, list[str]]]:
    """(sha, lines it added inside the followed range) of each commit of `git log -L` output, newest
    first; each commit's record starts with _HISTORY_MARK and its hash."""
    out: list[tuple[str, list[str]]] = []
    for record in text.split(_HISTORY_MARK)[1:]:
        sha, _, patch = record.partition("\n")
        added = [
            line[1:] for line in patch.split("\n") if line.startswith("+") and not line.startswith("+++ ")
        ]
        out.append((sha.strip(), added))
    return out


def only_moves(added: list[str], removed: set[str]) -> bool:
    """Whether every line of code a commit wrote in a range is one it deleted elsewhere (whitespace
    ignored): a move, which blame's copy detection traces to the commit that first wrote the lines."""
    code = [_squash(line) for line in added if is_meaningful(line)]
    return bool(code) and all(line in removed for line in code)


def _squash(line: str) -> str:
    return "".join(line.split())


def _old_path(name: str) -> str:
    """The path of `--- a/NAME`. git ends the line with a tab when an unquoted name holds a space (for GNU
    patch); a name with a tab of its own is quoted, so the tab is never part of it."""
    if not name.startswith('"'):
        name = name.removesuffix("\t")
    return _unquote(name)[2:]


def _unquote(path: str) -> str:
    if path.startswith('"') and path.endswith('"'):
        return (
            path[1:-1]
            .encode("latin-1", "backslashreplace")
            .decode("unicode_escape")
            .encode("latin-1")
            .decode()
        )
    return path


@dataclass(frozen=True, slots=True)
class SzzResult:
    """The SZZ candidates of some fixes, the parts of them git could not read, and R-SZZ's verdicts."""

    candidates: list[Candidate]
    failures: list[FixFailure]
    verdicts: list[Verdict]


def find_candidates(
    repository: Repository,
    fix_shas: list[str],
    parents: dict[str, list[str]],
    workers: int = 2,
    fallback: bool = True,
    ignore_revs: tuple[str, ...] = (),
    follow_copies: bool = True,
    adjacent: bool = False,
    line_history: bool = False,
) -> tuple[list[Candidate], list[FixFailure]]:
    """SZZ candidates of every fix (fixes without a parent have none), and what could not be read. With
    `fallback`, a fix whose source files give no candidate is blamed on its test and documentation files
    too, and then on whitespace added or removed within a line (git diff -b): on the developer-informed
    oracle such fixes are fixes of a broken test or of a space in a string literal (benchmarks/szz.py).
    With `line_history`, the commits that changed each hunk's lines and their context (git log -L) are
    candidates too, moves left out."""
    shas = [sha for sha in fix_shas if parents.get(sha)]
    passes: list[tuple[bool, bool | None]] = [(False, False)]
    if fallback:
        passes += [(True, False), (True, True)]
    if adjacent:
        passes.append((False, None))
    candidates: list[Candidate] = []
    failures: list[FixFailure] = []
    for tests, whitespace in passes:
        done = {c.fix_sha for c in candidates} | {f.fix_sha for f in failures}
        rest = [sha for sha in shas if sha not in done]
        if not rest:
            break
        found, failed = _blame_removed_lines(
            repository, rest, parents, workers, tests, whitespace, ignore_revs, follow_copies
        )
        candidates += found
        failures += failed
        if line_history and whitespace is not None:
            found, failed = _history_candidates(
                repository, rest, parents, workers, tests, whitespace, ignore_revs
            )
            candidates += found
            failures += failed
    return candidates, failures


def _history_candidates(
    repository: Repository,
    shas: list[str],
    parents: dict[str, list[str]],
    workers: int,
    tests: bool,
    whitespace: bool,
    ignore_revs: tuple[str, ...],
) -> tuple[list[Candidate], list[FixFailure]]:
    """The newest commits that changed the lines of each hunk or the _CONTEXT lines around it (the line
    history, `git log -L`, as in the "line history" SZZ variants), read at the fix's parent. A commit whose
    lines in the range were all moved there from elsewhere is left out (blame's copy detection finds who
    wrote them), and so is a fix whose hunks change only blank lines and comments. Each candidate's line
    is the first line of its file's first range."""
    regions, failures = _removed_lines(repository, shas, whitespace, parse_regions)
    by_file: dict[tuple[str, str], list[Region]] = {}
    for r in regions:
        if tests or not (file_kind(r.path).is_test or file_kind(r.path).is_docs):
            by_file.setdefault((r.fix_sha, r.path), []).append(r)
    code = {fix for (fix, _), rs in by_file.items() if any(r.meaningful for r in rs)}
    ignored = set(ignore_revs)

    def follow(task: tuple[tuple[str, str], list[Region]]) -> list[Candidate] | FixFailure:
        (fix, path), rs = task
        rev = parents[fix][0]
        length = _line_count(repository, rev, path)
        spans = [s for s in (widen(r.start, r.end, length, _CONTEXT) for r in rs) if s]
        if not spans:
            return []
        ranges = [f"-L{low},{high}:{path}" for low, high in spans]
        try:
            text = _git(repository, "log", "--no-merges", f"-n{_HISTORY_DEPTH}", "--no-color",
                        f"--format={_HISTORY_MARK}%H", *ranges, rev)  # fmt: skip
            history = [(sha, added) for sha, added in parse_history(text) if sha not in ignored]
            removed = _removed_by(repository, [sha for sha, added in history if added])
        except UnreadableRepository as exc:
            lines = sum(high - low + 1 for low, high in spans)
            return FixFailure(fix, path, HISTORY_FAILED, _git_message(exc), lines)
        return [
            Candidate(fix, sha, path, spans[0][0])
            for sha, added in history
            if not only_moves(added, removed.get(sha, set()))
        ]

    tasks = [(key, rs) for key, rs in by_file.items() if key[0] in code]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(follow, tasks))
    candidates = [c for f in found if isinstance(f, list) for c in f]
    return candidates, failures + [f for f in found if isinstance(f, FixFailure)]


def _line_count(repository: Repository, rev: str, path: str) -> int:
    return len((repository.file_at(rev, path) or "").splitlines())


def _removed_by(repository: Repository, shas: list[str]) -> dict[str, set[str]]:
    """The lines each commit deleted (whitespace squashed), from one `git log -p -w` pass."""
    out: dict[str, set[str]] = {}
    for sha, patch in repository.stream_patches(shas):
        out[sha] = {
            _squash(line[1:])
            for line in patch.split("\n")
            if line.startswith("-") and not line.startswith("--- ")
        }
    return out


def _git(repository: Repository, *args: str) -> str:
    """git's output in the repository; UnreadableRepository with git's first line of error if it fails."""
    done = subprocess.run(
        ["git", "-C", str(repository.path), *args], capture_output=True, text=True, errors="replace"
    )
    if done.returncode != 0:
        message = next((line for line in done.stderr.splitlines() if line.strip()), "no message")
        raise UnreadableRepository(f"{repository.path}: git {args[0]} failed: {message}")
    return done.stdout


def topological_seq(repository: Repository, head: str) -> dict[str, int]:
    """The ancestors of `head` in topological order, oldest first, as positions: a `seq` for
    `fix_inducing` on a repository that is not mined (the oracle's bundles, a test's repository)."""
    shas = _git(repository, "rev-list", "--topo-order", "--reverse", head).split()
    return {sha: i for i, sha in enumerate(shas)}


def _blame_removed_lines(
    repository: Repository,
    shas: list[str],
    parents: dict[str, list[str]],
    workers: int,
    tests: bool,
    whitespace: bool | None,
    ignore_revs: tuple[str, ...],
    follow_copies: bool,
) -> tuple[list[Candidate], list[FixFailure]]:
    """whitespace None: the lines around the insertions of a fix that only adds lines."""
    removed, failures = _removed_lines(repository, shas, whitespace)
    tasks = [r for r in removed if tests or not (file_kind(r.path).is_test or file_kind(r.path).is_docs)]

    def blame(task: RemovedLines) -> list[Candidate] | FixFailure:
        try:
            blamed = repository.blame_lines(
                parents[task.fix_sha][0], task.path, list(task.lines), ignore_revs, follow_copies
            )
        except UnreadableRepository as exc:
            return FixFailure(task.fix_sha, task.path, BLAME_FAILED, _git_message(exc), len(task.lines))
        return [Candidate(task.fix_sha, sha, task.path, line) for line, sha in sorted(blamed.items())]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(blame, tasks))
    candidates = [c for f in found if isinstance(f, list) for c in f]
    return candidates, failures + [f for f in found if isinstance(f, FixFailure)]


def _removed_lines(
    repository: Repository, shas: list[str], whitespace: bool | None = False, parse: Callable | None = None
) -> tuple[list, list[FixFailure]]:
    """The removed lines of each fix (or what `parse` reads from its patch), read in one `git log -p`
    pass. git stops at the first commit it cannot diff (a missing object): the fixes from there on are read
    one by one, to tell which failed."""
    if parse is None:
        parse = parse_insertion_points if whitespace is None else parse_removed_lines
    read: dict[str, list] = {}
    last: str | None = None
    try:
        for sha, patch in repository.stream_patches(shas, bool(whitespace)):
            read[sha], last = list(parse(sha, patch)), sha
    except UnreadableRepository:
        if last is not None:
            del read[last]  # git may have printed part of it before failing
    failures: list[FixFailure] = []
    for sha in shas:
        if sha in read:
            continue
        try:
            read[sha] = [
                r
                for _, patch in repository.stream_patches([sha], bool(whitespace))
                for r in parse(sha, patch)
            ]
        except UnreadableRepository as exc:
            failures.append(FixFailure(sha, None, DIFF_UNREADABLE, _git_message(exc)))
    return [r for sha in shas for r in read.get(sha, [])], failures


def _git_message(exc: Exception) -> str:
    """git's own words (`fatal: ...`) in an error raised by the repository, else the whole error."""
    match = _GIT_MESSAGE.search(str(exc))
    return match.group(0).rstrip("'") if match else str(exc)


def judge_fixes(
    repository: Repository,
    commits: pd.DataFrame,
    fix_shas: list[str],
    issue_opened: dict[str, pd.Timestamp] | None = None,
    workers: int = 2,
    line_history: bool = False,
) -> SzzResult:
    """R-SZZ on `fix_shas`, mined commits of `commits` (commits.parquet: sha, seq, committed_at, parents).
    `issue_opened` maps issue ids to their open dates, for the issue-date filter."""
    parents = dict(zip(commits["sha"], commits["parents"].map(list), strict=True))
    candidates, failures = find_candidates(repository, fix_shas, parents, workers, line_history=line_history)
    seq = dict(zip(commits["sha"], commits["seq"], strict=True))
    committed = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    fix_opened = (
        fix_issue_dates(fix_shas, repository.messages(fix_shas), issue_opened) if issue_opened else {}
    )
    foreign = {c.candidate_sha for c in candidates} - set(seq)
    merges = {sha for sha in foreign if len(repository.parents_of(sha)) > 1}
    verdicts = select_inducing(candidates, seq, committed, merges, fix_opened, failures)
    return SzzResult(candidates, failures, verdicts)


# How the bug-inducing commits of one fix are picked from its candidates (measured on the developer-informed
# oracle of Rosa et al., ICSE 2021, by benchmarks/szz.py):
# - "r-szz": the newest candidate (R-SZZ), as judge_fixes does;
# - "skip-fixes": a newest candidate that is itself a fix is replaced by what it blamed (an earlier partial
#   fix of the same bug wrote the lines, the bug came before it);
# - "ignore-cosmetic": candidates whose diff is empty under -w (reformatting, pure renames) and the commits of
#   the parent's .git-blame-ignore-revs are blamed through (git blame --ignore-rev);
# - "per-hunk": the newest candidate of each run of adjacent removed lines, all of them kept;
# - "most-lines": the candidate that wrote the most removed lines (the newest among equals);
# - "fallback": a fix with no candidate in source files is blamed on its test and documentation files (a fix
#   of a broken test fixes a bug in the test), and then on whitespace added or removed within a line (a
#   space in a string literal; re-indentation still blames nothing).
# - "no-copies": blame without move and copy detection (git blame -w, as PyDriller), so a line a refactor
#   moved or copied is blamed on the refactor.
# - "adjacent": a fix that removes nothing is blamed on the lines around its insertions.
# - "line-history": the commits that changed each hunk's lines or the 3 lines around it (git log -L) are
#   candidates beside the blamed ones, commits that only moved those lines left out; R-SZZ's newest is then
#   the last commit that changed the code the fix changed, not the last that wrote a line it removed.
STRATEGIES = (
    "r-szz",
    "skip-fixes",
    "ignore-cosmetic",
    "per-hunk",
    "most-lines",
    "fallback",
    "no-copies",
    "adjacent",
    "line-history",
)
# What judge_fixes does (find_candidates falls back by default, select_inducing keeps the newest).
DEFAULT_STRATEGIES = ("r-szz", "fallback")
_HUNK_GAP = 3  # removed lines further apart than this (old numbering) are independent hunks


def fix_inducing(
    repository: Repository,
    fix_sha: str,
    seq: dict[str, int],
    strategies: tuple[str, ...] = ("r-szz",),
    _depth: int = 0,
) -> list[str]:
    """The bug-inducing commits of ONE fix: its candidates (commits of `seq`, the point-in-time order of
    the branch, earlier than the fix and not merges) picked by the combined `strategies`."""
    parents = repository.parents_of(fix_sha)
    if not parents:
        return []
    ignore: tuple[str, ...] = ()
    if "ignore-cosmetic" in strategies:
        ignore = _ignore_revs_file(repository, parents[0])
    cosmetic: dict[str, bool] = {}
    for _ in range(4):  # each pass blames through the cosmetic commits the last one found
        found, _ = find_candidates(
            repository,
            [fix_sha],
            {fix_sha: parents},
            1,
            "fallback" in strategies,
            ignore,
            "no-copies" not in strategies,
            "adjacent" in strategies,
            "line-history" in strategies,
        )
        alive = _alive(repository, found, fix_sha, seq)
        if "ignore-cosmetic" not in strategies:
            break
        for sha in {c.candidate_sha for c in alive} - set(cosmetic):
            cosmetic[sha] = repository.is_cosmetic(sha)
        skipped = tuple(sorted(sha for sha in {c.candidate_sha for c in alive} if cosmetic[sha]))
        if not skipped:
            break
        ignore = tuple(sorted({*ignore, *skipped}))
    if not alive:
        return []
    picked = _pick(alive, seq, strategies)
    if "skip-fixes" in strategies and _depth < 2:
        picked = _follow_fixes(repository, fix_sha, picked, alive, seq, strategies, _depth)
    return picked


def _alive(
    repository: Repository, out: list[Candidate], fix_sha: str, seq: dict[str, int]
) -> list[Candidate]:
    """The candidates judge_fixes would not drop: commits of `seq` earlier than the fix, not merges."""
    merges: dict[str, bool] = {}
    kept = []
    for c in out:
        if c.candidate_sha not in seq or seq[c.candidate_sha] >= seq.get(fix_sha, 1 << 62):
            continue
        if c.candidate_sha not in merges:
            merges[c.candidate_sha] = len(repository.parents_of(c.candidate_sha)) > 1
        if not merges[c.candidate_sha]:
            kept.append(c)
    return kept


def _pick(alive: list[Candidate], seq: dict[str, int], strategies: tuple[str, ...]) -> list[str]:
    lines: dict[str, int] = {}
    for c in alive:
        lines[c.candidate_sha] = lines.get(c.candidate_sha, 0) + 1
    if "most-lines" in strategies:
        return [max(lines, key=lambda s: (lines[s], seq[s]))]
    if "per-hunk" in strategies:
        picked: set[str] = set()
        for hunk in _hunks(alive):
            picked.add(max((c.candidate_sha for c in hunk), key=lambda s: seq[s]))
        return sorted(picked, key=lambda s: seq[s])
    return [max(lines, key=lambda s: seq[s])]


def _hunks(alive: list[Candidate]) -> list[list[Candidate]]:
    """Runs of removed lines of one file no more than _HUNK_GAP lines apart."""
    runs: list[list[Candidate]] = []
    for c in sorted(alive, key=lambda c: (c.path, c.line)):
        if runs and runs[-1][-1].path == c.path and c.line - runs[-1][-1].line <= _HUNK_GAP:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def _follow_fixes(
    repository: Repository,
    fix_sha: str,
    picked: list[str],
    alive: list[Candidate],
    seq: dict[str, int],
    strategies: tuple[str, ...],
    depth: int,
) -> list[str]:
    """Replace each picked candidate that is itself a fix by what it blamed, or else by the next newest
    candidate; a fix that blamed nothing and has no older rival stays."""
    messages = repository.messages(picked)
    out: list[str] = []
    for sha in picked:
        if not is_fix_message(messages.get(sha, "")):
            out.append(sha)
            continue
        earlier = fix_inducing(repository, sha, seq, strategies, depth + 1)
        if earlier:
            out.extend(earlier)
            continue
        rivals = [c.candidate_sha for c in alive if c.candidate_sha != sha]
        out.append(max(rivals, key=lambda s: seq[s]) if rivals else sha)
    return sorted(set(out), key=lambda s: seq[s])


def _ignore_revs_file(repository: Repository, rev: str) -> tuple[str, ...]:
    """The commits listed in `.git-blame-ignore-revs` at `rev` (full hashes; comments and blanks skipped)."""
    text = repository.file_at(rev, ".git-blame-ignore-revs") or ""
    shas = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(sha for sha in shas if re.fullmatch(r"[0-9a-f]{40}", sha))
