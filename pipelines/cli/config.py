"""`awo config diff ENV...` and `awo config check [ENV...]`: per-environment configuration overlays under
the config root compared across environments. `check` exits 0 when clean, 4 on findings, 2 on usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.root import app, console, load_settings

if TYPE_CHECKING:
    from agents.config_check import ConfigReport

config_app = typer.Typer(
    help="Per-environment configuration: <config root>/<environment>/<service>.{yaml,json,env}.",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")

FINDINGS_EXIT = 4
RootOption = Annotated[
    Path | None, typer.Option("--root", help="the overlays' root (default: the config_root setting)")
]
PolicyOption = Annotated[
    Path | None, typer.Option("--policy", help="policy YAML with the `config` rules (default: AWO_POLICY)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the report as JSON")]
STATUS_STYLE = {"missing": "red", "must be equal": "red", "differs": "yellow", "may differ": "dim"}


def _report(environments: list[str] | None, root: Path | None, policy: Path | None) -> ConfigReport:
    from agents.config_check import check_config
    from agents.engine import policy_of

    settings = load_settings()
    rules = policy_of(settings, policy).config
    return check_config(root if root is not None else settings.config_root, rules, environments)


def _print_findings(report: ConfigReport) -> None:
    from rich.table import Table

    counts = report.counts()
    console.print(
        f"{report.root}: {len(report.environments)} environments ({', '.join(report.environments)}), "
        f"{len(report.services)} services, {report.keys} keys; findings: {counts['missing']} missing, "
        f"{counts['differs']} must-equal differing, {counts['secret']} plain-text secrets",
        highlight=False,
    )
    if not report.findings:
        return
    table = Table(title="findings")
    for column in ("kind", "service", "key", "environments", "detail", "where"):
        table.add_column(column)
    for f in report.findings:
        where = f"{f.file}:{f.line}" if f.file and f.line else ""
        table.add_row(f.kind, f.service, f.key, ", ".join(f.environments), f.detail, where)
    console.print(table)


@config_app.command("diff")
def diff(
    environments: Annotated[list[str], typer.Argument(help="environments to compare, e.g. dev staging prod")],
    root: RootOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every key whose value is not the same in all the environments (secrets masked), and the findings.
    Exits 0 (it shows; `awo config check` judges), 2 on usage errors."""
    from rich.table import Table
    from rich.text import Text

    from features.errors import BadConfig

    if len(environments) < 2:
        raise BadConfig(f"config diff compares two or more environments, got {', '.join(environments)}")
    report = _report(environments, root, policy)
    if as_json:
        console.print_json(report.model_dump_json())
        return
    table = Table(title=f"differences across {', '.join(report.environments)}")
    for column in ("service", "key", *report.environments, "status"):
        table.add_column(column)
    for d in report.differences:
        values = ["-" if d.values.get(e) is None else str(d.values[e]) for e in report.environments]
        table.add_row(d.service, d.key, *values, Text(d.status, style=STATUS_STYLE[d.status]))
    if report.differences:
        console.print(table)
    console.print(f"{len(report.differences)} keys differ", highlight=False)
    _print_findings(report)


@config_app.command("check")
def check(
    environments: Annotated[
        list[str] | None, typer.Argument(help="environments to check (default: every folder under the root)")
    ] = None,
    root: RootOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Keys missing in an environment, must-equal values that differ, plain-text secrets. Exit 0: clean;
    4: findings; 2: usage error (unknown environment, missing root, unparsable file)."""
    report = _report(environments or None, root, policy)
    if as_json:
        body = json.loads(report.model_dump_json())
        body["counts"] = report.counts()
        console.print_json(json.dumps(body))
    else:
        _print_findings(report)
    raise typer.Exit(FINDINGS_EXIT if report.findings else 0)
