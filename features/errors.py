"""Errors a user can act on: each carries a one-line message naming the file, field or value at fault."""

from __future__ import annotations


class AwoError(Exception):
    """A problem with the user's input or environment (not a bug): the CLI prints it and exits non-zero."""

    exit_code = 2


class NotAGitRepository(AwoError):
    pass


class EmptyRepository(AwoError):
    pass


class BranchNotFound(AwoError):
    pass


class ShallowClone(AwoError):
    pass


class UnreadableRepository(AwoError):
    pass


class BadTable(AwoError):
    """A table on disk does not have the schema the code expects."""


class BadConfig(AwoError):
    pass
