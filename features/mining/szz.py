"""SZZ candidates: for each fix commit, the commits that last wrote the lines it removed or changed.

Lines are taken from the fix's diff against its parent with whitespace-only changes ignored (`-w`); blank
lines and comment-only lines (starting with `#`, `//`, `/*`, `*`, `--`, `<!--`, or a docstring quote) are
skipped, and so are test and documentation files (a changed test line is not a defect). Each remaining
line is blamed at the parent with move and copy detection (`git blame -w -M -C`), so a line moved by a
refactor is traced to the commit that wrote it, not to the refactor. A fix that only adds lines has no
candidates (a known limit of every SZZ variant).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from features.classify import file_kind
from features.labels import Candidate
from features.mining.gitlog import Repository

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")
_COMMENT_PREFIXES = ("#", "//", "/*", "*", "--", "<!--", '"""', "'''")


@dataclass(frozen=True, slots=True)
class RemovedLines:
    fix_sha: str
    path: str  # path in the fix's parent
    lines: tuple[int, ...]


def is_meaningful(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(_COMMENT_PREFIXES)


def parse_removed_lines(fix_sha: str, patch: str) -> Iterator[RemovedLines]:
    """Removed lines per old path of one commit's zero-context patch."""
    path: str | None = None
    in_header = False
    old_line = 0
    found: list[int] = []

    def flush() -> Iterator[RemovedLines]:
        if path is not None and found:
            yield RemovedLines(fix_sha, path, tuple(found))

    for text in patch.split("\n"):
        if text.startswith("diff --git "):
            yield from flush()
            path, found, in_header = None, [], True
        elif in_header and text.startswith("--- "):
            old = text[4:]
            path = _unquote(old)[2:] if old != "/dev/null" else None
        elif text.startswith("@@"):
            in_header = False
            match = _HUNK.match(text)
            old_line = int(match.group(1)) if match else 0
        elif in_header:
            continue
        elif text.startswith("-"):
            if is_meaningful(text[1:]):
                found.append(old_line)
            old_line += 1
    yield from flush()


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


def find_candidates(repository: Repository, fix_shas: list[str], parents: dict[str, list[str]],
                    workers: int = 2) -> list[Candidate]:  # fmt: skip
    """SZZ candidates of every fix (fixes without a parent have none)."""
    tasks: list[RemovedLines] = []
    with_parent = [sha for sha in fix_shas if parents.get(sha)]
    for sha, patch in repository.stream_patches(with_parent):
        for removed in parse_removed_lines(sha, patch):
            kind = file_kind(removed.path)
            if not (kind.is_test or kind.is_docs):
                tasks.append(removed)

    def blame(task: RemovedLines) -> list[Candidate]:
        blamed = repository.blame_lines(parents[task.fix_sha][0], task.path, list(task.lines))
        return [Candidate(task.fix_sha, sha, task.path, line) for line, sha in sorted(blamed.items())]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [c for found in pool.map(blame, tasks) for c in found]
