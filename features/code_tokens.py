"""Tokens of a commit's diff, changed paths and message for the code-reading change-risk model (JITLine,
Pornprasit & Tantithamthavorn, MSR 2021: a bag of the code tokens of added and removed lines). Pure
functions: the same caps and tokens serve training, mining and the API."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

# A frame's code columns, defined once with the mined table's schema: `added_lines`/`removed_lines` are
# list[str] per commit (every file's lines in diff order), `message` is the full commit message.
from features.tables import CODE_COLUMNS, DIFF_MAX_CHARS, DIFF_MAX_LINES

# Caps applied identically in mining, training and serving (the mined table's own): a commit's first
# MAX_LINES added (and removed) lines, each cut to MAX_LINE_CHARS characters. Generated files and vendored
# code would otherwise dominate the bag of words and the time it takes to score one commit.
MAX_LINES = DIFF_MAX_LINES
MAX_LINE_CHARS = DIFF_MAX_CHARS

__all__ = [
    "ADDED_WHERE", "CHANGED_PATHS", "CODE_COLUMNS", "MAX_LINES", "MAX_LINE_CHARS", "capped", "changed_paths",
    "commit_text", "diff_lines", "diff_paths", "line_tokens", "message_tokens", "path_tokens", "subtokens",
    "tokens", "where_paths",
]  # fmt: skip

# Where a frame carries a commit's changed paths (list[str] per row): `changed_paths`, every changed file
# (the public JIT data's `files[*].path`, delete-only files included), else the mined table's and the
# change_risk_v2 service's `added_where` ("path:line" per added line: files with added lines only).
CHANGED_PATHS = "changed_paths"
ADDED_WHERE = "added_where"

# Prefixes keep the vocabularies of added lines, removed lines and the message apart in one bag of words:
# `return` added and `return` removed say different things; `p:` words are those of the changed paths.
ADDED, REMOVED, MESSAGE, PATH = "a:", "r:", "m:", "p:"

_STRING = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|==|!=|<=|>=|\*\*|//|->|[^\sA-Za-z0-9_]")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_CHANGE_ID = re.compile(r"^(change-id|signed-off-by|co-authored-by|reviewed-by):.*$", re.I | re.M)


def capped(lines: Iterable[str]) -> list[str]:
    """The first MAX_LINES lines, each cut to MAX_LINE_CHARS characters."""
    out: list[str] = []
    for line in lines:
        if len(out) == MAX_LINES:
            break
        out.append(str(line)[:MAX_LINE_CHARS])
    return out


def subtokens(identifier: str) -> list[str]:
    """The words of a camelCase or snake_case identifier, lower-cased (`getHTTPResponse_code` → get, http,
    response, code); an identifier that is one word has none."""
    parts = [p.lower() for chunk in identifier.split("_") for p in _CAMEL.findall(chunk)]
    return parts if len(parts) > 1 else []


def tokens(line: str) -> list[str]:
    """Code tokens of one line: string literals become `<str>`, numbers `<num>`, identifiers are kept
    (lower-cased) and followed by their camelCase/snake_case words, operators and punctuation are tokens."""
    out: list[str] = []
    for piece, is_string in _split_strings(line):
        if is_string:
            out.append("<str>")
            continue
        for token in _TOKEN.findall(piece):
            if token[0].isdigit():
                out.append("<num>")
            elif token[0].isalpha() or token[0] == "_":
                out.append(token.lower())
                out.extend(subtokens(token))
            else:
                out.append(token)
    return out


def _split_strings(line: str) -> list[tuple[str, bool]]:
    pieces, start = [], 0
    for match in _STRING.finditer(line):
        pieces.append((line[start : match.start()], False))
        pieces.append((match.group(0), True))
        start = match.end()
    pieces.append((line[start:], False))
    return pieces


def message_tokens(message: str) -> list[str]:
    """Words of a commit message without its trailer lines (Change-Id and the like are noise)."""
    return [t for t in tokens(_CHANGE_ID.sub("", message or "")) if t[0].isalnum() or t[0] == "<"]


def path_tokens(paths: Iterable[str]) -> list[str]:
    """Words of a commit's changed paths, each distinct path once: its directory and file names, their
    camelCase/snake_case words and the extension (`nova/compute/rpcApi.py` → nova, compute, rpcapi, rpc,
    api, py). Which component a change touches is a known defect predictor (Kamei 2013's subsystems)."""
    return [
        t
        for path in dict.fromkeys(str(p) for p in paths)
        for t in tokens(path)
        if t[0].isalnum() or t[0] == "<"
    ]


def where_paths(added_where: Iterable[str]) -> list[str]:
    """The distinct paths of "path:line" entries (`added_where`), in first-seen order."""
    return list(dict.fromkeys(str(w).rpartition(":")[0] for w in added_where))


def commit_text(
    added_lines: Sequence[str], removed_lines: Sequence[str], message: str, paths: Iterable[str] = ()
) -> str:
    """One commit as a space-separated bag of prefixed tokens (`a:…`, `r:…`, `m:…`, `p:…`), the document
    the text vectoriser reads with a whitespace token pattern; the line caps are applied here."""
    words = [ADDED + t for line in capped(added_lines) for t in tokens(line)]
    words += [REMOVED + t for line in capped(removed_lines) for t in tokens(line)]
    words += [MESSAGE + t for t in message_tokens(message)]
    words += [PATH + t for t in path_tokens(paths)]
    return " ".join(words)


def line_tokens(line: str) -> list[str]:
    """The prefixed tokens one added line contributes to `commit_text` (for line-level explanations)."""
    return [ADDED + t for t in tokens(str(line)[:MAX_LINE_CHARS])]


def diff_lines(files: Iterable[Mapping]) -> tuple[list[str], list[str]]:
    """(added_lines, removed_lines) of a commit from per-file `{path, added, removed}` records, in diff
    order — the shape of the public OpenStack JIT data and of `git show -U0`."""
    added: list[str] = []
    removed: list[str] = []
    for entry in files:
        added.extend(str(x) for x in entry["added"])
        removed.extend(str(x) for x in entry["removed"])
    return added, removed


def diff_paths(files: Iterable[Mapping]) -> list[str]:
    """Every changed path of a commit from per-file `{path, added, removed}` records (delete-only and
    binary files included)."""
    return [str(entry["path"]) for entry in files]


def changed_paths(changed: Iterable[str] | None, added_where: Iterable[str] | None) -> list[str]:
    """A commit's changed paths from one row's `changed_paths` (every file) when it has them, else from
    its `added_where` (files with added lines); none from neither (a row without paths is scored on its
    lines and message alone). A missing cell (None or a float NaN) counts as absent."""
    if changed is not None and not isinstance(changed, float):
        return [str(p) for p in changed]
    if added_where is not None and not isinstance(added_where, float):
        return where_paths(added_where)
    return []
