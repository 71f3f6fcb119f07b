"""Tokens of a commit's diff and message for the code-reading change-risk model (JITLine, Pornprasit &
Tantithamthavorn, MSR 2021: a bag of the code tokens of added and removed lines). Pure functions: the
same caps and tokens serve training, mining and the API."""

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
    "CODE_COLUMNS", "MAX_LINES", "MAX_LINE_CHARS", "capped", "commit_text", "diff_lines", "line_tokens",
    "message_tokens", "subtokens", "tokens",
]  # fmt: skip

# Prefixes keep the vocabularies of added lines, removed lines and the message apart in one bag of words:
# `return` added and `return` removed say different things.
ADDED, REMOVED, MESSAGE = "a:", "r:", "m:"

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


def commit_text(added_lines: Sequence[str], removed_lines: Sequence[str], message: str) -> str:
    """One commit as a space-separated bag of prefixed tokens (`a:…`, `r:…`, `m:…`), the document the text
    vectoriser reads with a whitespace token pattern; the line caps are applied here."""
    words = [ADDED + t for line in capped(added_lines) for t in tokens(line)]
    words += [REMOVED + t for line in capped(removed_lines) for t in tokens(line)]
    words += [MESSAGE + t for t in message_tokens(message)]
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
