"""The `awo` command line: one command per pipeline stage, one module per stage group (mining, features,
models, serving, agents, demo). Heavy libraries are imported inside the commands, so `awo --help` starts fast.
Errors are handled once, in `root`: one line `error: ...` on stderr and exit code 2."""

# Importing a module registers its commands; the stage order here is the order of `awo --help`.
# isort: off
from pipelines.cli import mining, features, models, serving, agents, rollout, monitoring, diagnosis, demo  # noqa: F401
from pipelines.cli import config  # noqa: F401

# isort: on
from pipelines.cli.root import app, main

__all__ = ["app", "main"]
