"""The repository seen through PyDriller: open and validate it, read its commit graph, and stream the
diffs of chosen commits in one `git log --raw --numstat -z` pass through PyDriller's git handle (and
their added and removed lines in a `git log -p -U0` pass beside it).

Reading `modified_files` commit by commit (PyDriller's `Repository`) costs a `git diff` per commit;
one streamed pass costs about as much as plain `git log --numstat` (see benchmarks/mining.py)."""

from __future__ import annotations

import codecs
import io
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from features.change_metrics import ADD, DELETE, MODIFY, RENAME, FileChange
from features.errors import (
    BranchNotFound,
    EmptyRepository,
    NotAGitRepository,
    ShallowClone,
    UnreadableRepository,
)
from features.tables import DIFF_MAX_CHARS, DIFF_MAX_LINES

_MARK = "\x1e\x1eAWO"
_LOG_FORMAT = "%x1e%x1eAWO%H%x1f%P%x1f%aN%x1f%aE%x1f%ct%x1f%B"
_DIFF_OPTIONS = (
    "--no-walk=unsorted", "--stdin", "-M", "--raw", "--numstat", "-z", "--no-color", "--no-ext-diff",
    "--no-textconv", "--no-show-signature", "--encoding=UTF-8", f"--format={_LOG_FORMAT}",
)  # fmt: skip
_PATCH_OPTIONS = (
    "--no-walk=unsorted", "--stdin", "-M", "-p", "-w", "--unified=0", "--no-color", "--no-ext-diff",
    "--no-textconv", "--no-show-signature", "--format=%x1e%x1eAWO%H",
)  # fmt: skip
# The code pass: the real lines (no -w), zero context, renames followed, prefixes fixed whatever the
# user's diff.noprefix / diff.mnemonicPrefix say.
_CODE_DIFF = (
    "-M", "-p", "--unified=0", "--no-color", "--no-ext-diff", "--no-textconv", "--src-prefix=a/",
    "--dst-prefix=b/",
)  # fmt: skip
_CODE_OPTIONS = (
    "--no-walk=unsorted", "--stdin", *_CODE_DIFF, "--no-show-signature", "--format=%x1e%x1eAWO%H",
)  # fmt: skip
_CHANGE_TYPES = {"A": ADD, "C": ADD, "D": DELETE, "R": RENAME}
# Files written by package managers: thousands of generated lines that say nothing of the change's risk
# and would fill a commit's line budget.
LOCK_FILES = frozenset(
    {
        "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Pipfile.lock", "uv.lock",
        "Cargo.lock", "Gemfile.lock", "composer.lock", "go.sum", "pdm.lock", "flake.lock",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RawCommit:
    sha: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    committed_ts: int
    message: str
    files: tuple[FileChange, ...]


@dataclass(frozen=True, slots=True)
class CommitCode:
    """The lines a commit adds and removes, capped (see features.tables.DIFFS_SCHEMA)."""

    sha: str
    added_lines: tuple[str, ...]
    added_where: tuple[str, ...]  # "path:line" of each added line in the new file
    removed_lines: tuple[str, ...]
    truncated: bool


@dataclass(frozen=True, slots=True)
class GraphNode:
    sha: str
    parents: tuple[str, ...]
    committed_ts: int


class Repository:
    """A validated local git repository, opened through PyDriller."""

    def __init__(self, path: Path) -> None:
        from git.exc import InvalidGitRepositoryError, NoSuchPathError
        from pydriller import Git

        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise NotAGitRepository(f"{self.path} does not exist")
        try:
            self._git = Git(str(self.path))
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise NotAGitRepository(f"{self.path} is not a git repository") from None
        if self._run("rev-parse", "--is-shallow-repository").strip() == "true":
            raise ShallowClone(
                f"{self.path} is a shallow clone: the metrics need the full history "
                "(run `git fetch --unshallow` there first)"
            )

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".git")

    def _run(self, *args: str) -> str:
        from git.exc import GitCommandError

        try:
            return self._git.repo.git.execute(["git", *args])
        except GitCommandError as exc:
            raise UnreadableRepository(
                f"{self.path}: git {args[0]} failed: {_first_line(exc.stderr)}"
            ) from None

    def _try(self, *args: str) -> str | None:
        from git.exc import GitCommandError

        try:
            return self._git.repo.git.execute(["git", *args])
        except GitCommandError:
            return None

    def resolve_branch(self, branch: str | None) -> str:
        """The commit sha at the tip of `branch` (default: HEAD)."""
        if branch is None:
            head = self._try("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
            if not head:
                if not self._try("for-each-ref", "--count=1", "refs/heads"):
                    raise EmptyRepository(f"{self.path} has no commits")
                raise BranchNotFound(f"{self.path}: HEAD points to a branch with no commits; pass --branch")
            return head.strip()
        for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}", branch):
            sha = self._try("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
            if sha:
                return sha.strip()
        if not self._try("for-each-ref", "--count=1", "refs/heads"):
            raise EmptyRepository(f"{self.path} has no commits")
        known = (self._try("for-each-ref", "--format=%(refname:short)", "refs/heads") or "").split()
        raise BranchNotFound(
            f"branch {branch!r} not found in {self.path} (branches: {', '.join(known[:10])})"
        )

    def graph(self, head: str) -> list[GraphNode]:
        """Every commit reachable from `head`, merges included, parents before children."""
        out = self._run("log", "--topo-order", "--reverse", "--format=%H%x1f%P%x1f%ct", head)
        nodes = []
        for line in out.splitlines():
            sha, parents, ts = line.split("\x1f")
            nodes.append(GraphNode(sha, tuple(parents.split()), int(ts)))
        return nodes

    def stream_commits(self, shas: list[str], workers: int = 1) -> Iterator[RawCommit]:
        """The diffs of `shas`, in that order. With several workers, chunks are diffed by parallel git
        processes and yielded in order."""
        if not shas:
            return
        if workers <= 1 or len(shas) < 2 * workers:
            yield from self._stream_chunk(shas)
            return
        size = -(-len(shas) // workers)
        chunks = [shas[i : i + size] for i in range(0, len(shas), size)]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            # git does the diffing in parallel; parsing stays in this thread, chunk by chunk in order.
            futures = [pool.submit(self._log_output, chunk) for chunk in chunks]
            for future in futures:
                output = future.result()  # raises UnreadableRepository when git failed
                try:
                    yield from _parse_records(iter([output]))
                except (ValueError, IndexError) as exc:
                    raise UnreadableRepository(f"{self.path}: unexpected git log output ({exc})") from exc

    def stream_code(self, shas: list[str], workers: int = 1) -> Iterator[CommitCode]:
        """The added and removed lines of `shas`, in that order (binary and lock files left out, capped at
        DIFF_MAX_LINES lines of DIFF_MAX_CHARS characters each way). With several workers, chunks are
        diffed by parallel git processes and yielded in order, as in `stream_commits`."""
        if not shas:
            return
        if workers <= 1 or len(shas) < 2 * workers:
            proc, drain, errors = self._start_log(shas, _CODE_OPTIONS)
            yield from _code_records(io.TextIOWrapper(_stdout(proc), "utf-8", "replace", newline="\n"))
            self._finish(proc, drain, errors)
            return
        size = -(-len(shas) // workers)
        chunks = [shas[i : i + size] for i in range(0, len(shas), size)]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            futures = [pool.submit(self._log_output, chunk, _CODE_OPTIONS) for chunk in chunks]
            for future in futures:
                output = future.result()
                yield from _code_records(io.StringIO(output.decode("utf-8", "replace"), newline="\n"))

    def _start_log(
        self, shas: list[str], options: tuple[str, ...] = _DIFF_OPTIONS
    ) -> tuple[subprocess.Popen, threading.Thread, list[bytes]]:
        with tempfile.TemporaryFile() as stdin:
            stdin.write("\n".join(shas).encode() + b"\n")
            stdin.seek(0)
            handle = self._git.repo.git.log(*options, as_process=True, istream=stdin)
        # GitPython kills the process when its handle is collected: keep it alive with the process.
        proc = handle.proc
        proc._awo_handle = handle
        errors: list[bytes] = []
        # Drain stderr on the side so that a chatty git (rename-limit warnings) can never block.
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        drain.start()
        return proc, drain, errors

    def _finish(self, proc: subprocess.Popen, drain: threading.Thread, errors: list[bytes]) -> None:
        code = proc.wait()
        drain.join()
        if code != 0:
            message = errors[0].decode(errors="replace") if errors else ""
            raise UnreadableRepository(f"{self.path}: git log failed (exit {code}): {_first_line(message)}")

    def messages(self, shas: list[str]) -> dict[str, str]:
        """Full commit messages of `shas`."""
        if not shas:
            return {}
        proc, drain, errors = self._start_log(
            shas, ("--no-walk=unsorted", "--stdin", "--format=%x1e%x1eAWO%H%x1f%B")
        )
        out = {}
        for record in _split_records(iter(lambda: _stdout(proc).read(1 << 16), b"")):
            sha, _, message = record.partition("\x1f")
            out[sha] = message.strip()
        self._finish(proc, drain, errors)
        return out

    def parents_of(self, sha: str) -> list[str]:
        return self._run("rev-list", "--parents", "-n", "1", sha).split()[1:]

    def is_cosmetic(self, sha: str) -> bool:
        """Whether `sha` changes nothing but whitespace, line breaks or the place of whole files: its diff
        against its first parent is empty once whitespace is ignored and renames are followed."""
        parents = self.parents_of(sha)
        if len(parents) != 1:
            return False
        diff = self._try("diff", "-w", "--ignore-blank-lines", "-M", "--numstat", parents[0], sha)
        if diff is None:
            return False
        return all(line.startswith("0\t0\t") for line in diff.splitlines() if line.strip())

    def file_at(self, rev: str, path: str) -> str | None:
        """The text of `path` at `rev`, or None where it does not exist there."""
        return self._try("show", f"{rev}:{path}")

    def stream_patches(self, shas: list[str], whitespace: bool = False) -> Iterator[tuple[str, str]]:
        """(sha, patch text) of each commit: zero-context hunks, whitespace-only changes ignored; with
        `whitespace`, only changes in the amount of whitespace are (-b, not -w): a space added inside a
        string literal can be the bug, a re-indented line is not read as one."""
        if not shas:
            return
        options = tuple("-b" if o == "-w" else o for o in _PATCH_OPTIONS) if whitespace else _PATCH_OPTIONS
        proc, drain, errors = self._start_log(shas, options)
        for record in _split_records(iter(lambda: _stdout(proc).read(1 << 16), b"")):
            sha, _, patch = record.partition("\n")
            yield sha.strip(), patch
        self._finish(proc, drain, errors)

    def blame_lines(
        self,
        rev: str,
        path: str,
        lines: list[int],
        ignore_revs: tuple[str, ...] = (),
        follow_copies: bool = True,
    ) -> dict[int, str]:
        """The commit that last wrote each of `lines` of `path` at `rev`, ignoring whitespace and following
        lines moved or copied within the file and from other files of the same commit (git blame -w -M -C).
        A line last touched by one of `ignore_revs` is traced past it (git blame --ignore-rev). Without
        `follow_copies`, a line moved or copied is blamed on the commit that moved it (git blame -w)."""
        from git.exc import GitCommandError

        # The whole file is blamed: restricted to a few lines (-L), git's move/copy detection misses
        # moved blocks, whose similarity it judges within the range only.
        wanted = set(lines)
        ignored = [f"--ignore-rev={sha}" for sha in ignore_revs]
        try:
            copies = ("-M", "-C") if follow_copies else ()
            out = self._git.repo.git.blame("-w", *copies, *ignored, "--porcelain", rev, "--", path)
        except GitCommandError as exc:
            raise UnreadableRepository(
                f"{self.path}: git blame {rev} -- {path} failed: {_first_line(exc.stderr)}"
            ) from None
        blamed: dict[int, str] = {}
        for line in out.splitlines():
            head = line.split(" ", 3)
            is_header = len(head) >= 3 and len(head[0]) == 40 and head[1].isdigit() and head[2].isdigit()
            if is_header and int(head[2]) in wanted:
                blamed[int(head[2])] = head[0]
        return blamed

    def _log_output(self, shas: list[str], options: tuple[str, ...] | None = None) -> bytes:
        # No options: the numstat pass, started as `stream_commits` starts it.
        proc, drain, errors = self._start_log(shas) if options is None else self._start_log(shas, options)
        out = _stdout(proc).read()
        self._finish(proc, drain, errors)
        return out

    def _stream_chunk(self, shas: list[str]) -> Iterator[RawCommit]:
        proc, drain, errors = self._start_log(shas)
        try:
            yield from _parse_records(iter(lambda: _stdout(proc).read(1 << 16), b""))
        except (ValueError, IndexError) as exc:
            # git may print part of a commit before it fails on an unreadable object: its exit status
            # says what went wrong, not the truncated output.
            _stdout(proc).read()
            self._finish(proc, drain, errors)
            raise UnreadableRepository(f"{self.path}: unexpected git log output ({exc})") from exc
        self._finish(proc, drain, errors)

    def read_unmined_change(self, base: str, head: str) -> tuple[RawCommit, list[str]]:
        """The change a pull request of `head` into `base` would land, read as the miner reads a commit:
        the diff from their merge base to `head` (same rename detection and numstat) as one RawCommit with
        the merge base as parent, `head`'s author and commit time, and the messages of every commit in
        the range, newest first; and the shas of those commits."""
        head_sha = self._run("rev-parse", "--verify", "--end-of-options", f"{head}^{{commit}}").strip()
        base_sha = self._run("rev-parse", "--verify", "--end-of-options", f"{base}^{{commit}}").strip()
        merge_base = self._run("merge-base", base_sha, head_sha).strip()
        shas = self._run("rev-list", f"{merge_base}..{head_sha}").split()
        header = self._run("log", "-n", "1", "--no-show-signature", "--format=%aN%x1f%aE%x1f%ct", head_sha)
        name, email, ts = header.strip().split("\x1f")
        found = self.messages(shas)
        message = "\n\n".join(found.get(sha, "") for sha in shas)
        diff = self._run(
            "diff", "-M", "--raw", "--numstat", "-z", "--no-color", "--no-ext-diff", "--no-textconv",
            merge_base, head_sha,
        )  # fmt: skip
        record = "\x1f".join((head_sha, merge_base, name, email, ts, message)) + "\0" + diff
        try:
            return _parse_record(record), shas
        except (ValueError, IndexError) as exc:
            raise UnreadableRepository(f"{self.path}: unexpected git diff output ({exc})") from exc

    def read_unmined_code(self, merge_base: str, head_sha: str) -> CommitCode:
        """The added and removed lines of the diff from `merge_base` to `head_sha`, read and capped as the
        miner reads a commit's (`stream_code`)."""
        from git.exc import GitCommandError

        try:
            out = self._git.repo.git.execute(
                ["git", "diff", *_CODE_DIFF, merge_base, head_sha], stdout_as_string=False
            )
        except GitCommandError as exc:
            raise UnreadableRepository(f"{self.path}: git diff failed: {_first_line(exc.stderr)}") from None
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        reader = _CodeReader(head_sha)
        for line in text.split("\n"):
            reader.feed(line)
        return reader.finish()


def _code_records(lines: Iterable[str]) -> Iterator[CommitCode]:
    """The CommitCode of each commit of a `git log -p -U0` stream in the `_CODE_OPTIONS` format."""
    reader: _CodeReader | None = None
    for line in lines:
        if line.startswith(_MARK):
            if reader is not None:
                yield reader.finish()
            reader = _CodeReader(line[len(_MARK) :].strip())
        elif reader is not None:
            reader.feed(line[:-1] if line.endswith("\n") else line)
    if reader is not None:
        yield reader.finish()


class _CodeReader:
    """Reads one commit's zero-context patch line by line. Hunk headers give how many removed and added
    lines follow, so a line is never mistaken for a header (an added "++ x" reads "+++ x")."""

    def __init__(self, sha: str) -> None:
        self.sha = sha
        self.added: list[str] = []
        self.where: list[str] = []
        self.removed: list[str] = []
        self.truncated = False
        self.path = ""  # the new path of the file being read
        self.keep = True  # False for a lock file
        self.old_left = 0  # removed lines still to come in the current hunk
        self.new_left = 0  # added lines still to come
        self.new_line = 0  # line number in the new file of the next added line

    def feed(self, line: str) -> None:
        if self.old_left and line.startswith("-"):
            self.old_left -= 1
            if self.keep:
                self._keep(self.removed, line)
        elif self.new_left and line.startswith("+"):
            self.new_left -= 1
            if self.keep and self._keep(self.added, line):
                self.where.append(f"{self.path}:{self.new_line}")
            self.new_line += 1
        elif line.startswith("@@ "):
            old, new = line.split(" ", 3)[1:3]
            self.old_left = _hunk_count(old)
            self.new_left = _hunk_count(new)
            self.new_line = int(new[1:].split(",", 1)[0])
        elif line.startswith(("--- ", "+++ ")):
            path = _patch_path(line[4:])  # "--- a/OLD", "+++ b/NEW", or /dev/null when there is none
            if path is not None and path.rsplit("/", 1)[-1] in LOCK_FILES:
                self.keep = False
            elif line[0] == "+" and path is not None:
                self.path = path
        elif line.startswith("diff --git "):
            self.path, self.keep, self.old_left, self.new_left = "", True, 0, 0

    def _keep(self, kept: list[str], line: str) -> bool:
        if len(kept) >= DIFF_MAX_LINES:
            self.truncated = True
            return False
        text = line[1:]
        if len(text) > DIFF_MAX_CHARS:
            text = text[:DIFF_MAX_CHARS]
            self.truncated = True
        kept.append(text)
        return True

    def finish(self) -> CommitCode:
        return CommitCode(self.sha, tuple(self.added), tuple(self.where), tuple(self.removed), self.truncated)


def _hunk_count(span: str) -> int:
    """The line count of a hunk header's "-a,b" or "+c,d" (no ",b": one line)."""
    _, comma, count = span.partition(",")
    return int(count) if comma else 1


def _patch_path(name: str) -> str | None:
    """The path of a "--- a/PATH" or "+++ b/PATH" line's name, unquoted; None for /dev/null."""
    name = name.rstrip("\t")  # git ends a name holding a space with a tab
    if name.startswith('"') and name.endswith('"'):
        # C-style quoting of unusual bytes: octal escapes of the UTF-8 bytes.
        name = codecs.escape_decode(name[1:-1].encode())[0].decode("utf-8", "replace")
    return name[2:] if name.startswith(("a/", "b/")) else None


def _stdout(proc: subprocess.Popen) -> IO[bytes]:
    """The output pipe of a git process started by `_start_log` (always opened with a pipe)."""
    if proc.stdout is None:
        raise UnreadableRepository("git log was started without an output pipe")
    return proc.stdout


def _first_line(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for prefix in ("fatal:", "error:"):  # git's last word names the object; earlier errors are symptoms
        for ln in lines:
            if ln.startswith(prefix):
                return ln
    return lines[0] if lines else "no message"


def _split_records(chunks: Iterable[bytes]) -> Iterator[str]:
    """The text of each commit in a `git log` stream whose format starts with the record mark."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode("utf-8", errors="replace")
        parts = buffer.split(_MARK)
        buffer = parts.pop()
        yield from (part for part in parts if part)
    if buffer:
        yield buffer


def _parse_records(chunks: Iterable[bytes]) -> Iterator[RawCommit]:
    return map(_parse_record, _split_records(chunks))


def _parse_record(record: str) -> RawCommit:
    header, _, diff = record.partition("\0")
    sha, parents, name, email, ts, message = header.split("\x1f", 5)
    tokens = diff.split("\0")
    raws: list[tuple[str, str, str | None]] = []  # (letter, path, old_path)
    stats: list[tuple[str, str]] = []
    i, n = 0, len(tokens)
    while i < n:
        token = tokens[i].lstrip("\n")
        if not token:
            i += 1
        elif token[0] == ":":
            letter = token.rsplit(" ", 1)[1][0]
            if letter in "RC":
                raws.append((letter, tokens[i + 2], tokens[i + 1]))
                i += 3
            else:
                raws.append((letter, tokens[i + 1], None))
                i += 2
        else:
            added, deleted, path = token.split("\t", 2)
            stats.append((added, deleted))
            i += 3 if path == "" else 1
    files = []
    for (letter, path, old_path), (added, deleted) in zip(raws, stats, strict=True):
        binary = added == "-"
        files.append(
            FileChange(
                path=path,
                change_type=_CHANGE_TYPES.get(letter, MODIFY),
                la=0 if binary else int(added),
                ld=0 if binary else int(deleted),
                old_path=old_path if letter == "R" else None,
                is_binary=binary,
            )
        )
    return RawCommit(sha, tuple(parents.split()), name, email, int(ts), message.strip(), tuple(files))
