"""The root `awo` command, its consoles, and the one place where errors become an exit status: an
AwoError is one line `error: <message>` on stderr with its exit code (2), Ctrl-C exits 130."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from features.errors import AwoError

if TYPE_CHECKING:
    from features.settings import Settings

# Markup off: what the commands print quotes data (paths, rejected values, git's messages) that may look
# like rich markup ("[/x]"); the few styled labels go through `styled`.
console = Console(stderr=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False)


def styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style`, then `rest` as plain text."""
    return Text.assemble((label, style), rest)


DataOption = Annotated[
    Path | None,
    typer.Option("--data", help="directory of this repository's tables (default: <data root>/<repo name>/)"),
]


def one_line(message: str) -> str:
    """A message on one line: multi-line texts of libraries (a YAML parser's) are joined with '; '."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def print_error(message: str) -> None:
    err_console.print(styled("error:", "bold red", " " + one_line(message)), highlight=False)


def fail(message: str, exit_code: int = AwoError.exit_code) -> NoReturn:
    print_error(message)
    raise typer.Exit(exit_code)


@contextmanager
def errors_as_exit_codes() -> Iterator[None]:
    """The CLI's single error handler: user errors exit with one line, never a traceback; a bug still
    raises with its traceback."""
    try:
        yield
    except AwoError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


class AwoGroup(TyperGroup):
    """The root command group. Every subcommand runs inside its `invoke`, so the handler here covers
    `awo ...` from the console script and `CliRunner().invoke(app, ...)` in tests alike."""

    def invoke(self, ctx: Any) -> Any:  # a Context of the click that typer vendors (typer._click)
        with errors_as_exit_codes():
            return super().invoke(ctx)


app = typer.Typer(
    name="awo",
    cls=AwoGroup,
    help="Agentic Workflow Orchestrator: how risky is a change, what to test, how to ship it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def load_settings(**overrides: Any) -> Settings:
    from features.settings import load_settings as load

    return load(**overrides)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # The commands print their own summaries in numbers; MLflow's INFO lines and download bars (it
        # configures its loggers from these variables when first imported) would bury them.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main() -> None:  # pragma: no cover - entry point
    app()
