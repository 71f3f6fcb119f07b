"""A Terraform plan in Terraform's documented JSON format (`terraform show -json PLANFILE`, "JSON Output
Format" in the Terraform internals docs): counts of resources created, updated, replaced and destroyed per
type, and the stateful resources (databases, volumes, buckets) a plan destroys or replaces."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from features.errors import BadConfig

Action = Literal["create", "update", "replace", "delete"]
# Terraform's `change.actions` lists; no-op and read change nothing and are not counted.
_ACTIONS: dict[tuple[str, ...], Action | None] = {
    ("create",): "create",
    ("update",): "update",
    ("delete",): "delete",
    ("delete", "create"): "replace",
    ("create", "delete"): "replace",
    ("no-op",): None,
    ("read",): None,
}
# The docs: a minor version adds fields (ignore them), a new major version breaks (reject it). Terraform
# before 1.1 wrote 0.1 and 0.2.
SUPPORTED_MAJORS = frozenset({"0", "1"})


class TerraformPlanError(BadConfig):
    """A plan file that is not Terraform's JSON plan format; the message names the file and the field."""


class ResourceCounts(BaseModel):
    model_config = ConfigDict(frozen=True)
    created: int = 0
    updated: int = 0
    replaced: int = 0
    destroyed: int = 0


class ResourceChange(BaseModel):
    model_config = ConfigDict(frozen=True)
    address: str
    type: str
    action: Action


class TerraformPlan(BaseModel):
    """What a plan does, as plain data: every managed resource it changes, and the counts per type."""

    model_config = ConfigDict(frozen=True)
    source: str = Field(description="the plan file it was read from")
    format_version: str
    changes: list[ResourceChange] = Field(default_factory=list)

    def counts(self) -> dict[str, ResourceCounts]:
        field = {"create": "created", "update": "updated", "replace": "replaced", "delete": "destroyed"}
        tally: dict[str, dict[str, int]] = {}
        for change in self.changes:
            per_type = tally.setdefault(change.type, {})
            per_type[field[change.action]] = per_type.get(field[change.action], 0) + 1
        return {t: ResourceCounts(**tally[t]) for t in sorted(tally)}

    def totals(self) -> ResourceCounts:
        counts = self.counts().values()
        return ResourceCounts(
            created=sum(c.created for c in counts),
            updated=sum(c.updated for c in counts),
            replaced=sum(c.replaced for c in counts),
            destroyed=sum(c.destroyed for c in counts),
        )

    def summary(self) -> str:
        t = self.totals()
        return (
            f"Terraform plan {self.source}: {t.created} to create, {t.updated} to update, "
            f"{t.replaced} to replace, {t.destroyed} to destroy"
        )


def _field(where: str, source: str, value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise TerraformPlanError(f"terraform plan {source}: {where}{name} is {got}, expected {expected}")
    return value


def parse_plan(doc: Any, source: str) -> TerraformPlan:
    """The plan of a `terraform show -json` document. Managed resources only (`mode: data` reads nothing
    into the world); unknown fields are ignored as the format's compatibility rules ask."""
    _field("", source, doc, dict, "the document")
    version = _field("", source, doc.get("format_version"), str, "format_version")
    if version.split(".")[0] not in SUPPORTED_MAJORS:
        raise TerraformPlanError(
            f"terraform plan {source}: format_version {version!r} is not supported (major versions "
            f"{', '.join(sorted(SUPPORTED_MAJORS))}); is it `terraform show -json` output?"
        )
    raw = doc.get("resource_changes", [])  # absent when the plan changes nothing
    _field("", source, raw, list, "resource_changes")
    changes: list[ResourceChange] = []
    for i, item in enumerate(raw):
        where = f"resource_changes[{i}]."
        _field("", source, item, dict, f"resource_changes[{i}]")
        address = _field(where, source, item.get("address"), str, "address")
        type_ = _field(where, source, item.get("type"), str, "type")
        mode = item.get("mode", "managed")
        change = _field(where, source, item.get("change"), dict, "change")
        actions = _field(where, source, change.get("actions"), list, "change.actions")
        key = tuple(str(a) for a in actions)
        if key not in _ACTIONS:
            raise TerraformPlanError(
                f"terraform plan {source}: {where}change.actions {list(actions)!r} of {address} is not "
                "one of Terraform's action lists"
            )
        action = _ACTIONS[key]
        if action is None or mode != "managed":
            continue
        changes.append(ResourceChange(address=address, type=type_, action=action))
    return TerraformPlan(source=source, format_version=version, changes=changes)


def parse_plan_text(text: str, source: str) -> TerraformPlan:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TerraformPlanError(
            f"terraform plan {source}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "write it with `terraform show -json PLANFILE`"
        ) from None
    return parse_plan(doc, source)


def read_plan(path: Path) -> TerraformPlan:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TerraformPlanError(f"terraform plan {path}: cannot be read ({exc})") from None
    return parse_plan_text(text, str(path))


def is_plan_file(path: str, patterns: list[str]) -> bool:
    """Whether a changed file is a committed plan by the policy's file-name globs (`*.tfplan.json`)."""
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p) for p in patterns)


def stateful_changes(plan: TerraformPlan, stateful_types: list[str]) -> list[ResourceChange]:
    """The destroys and replacements of resources whose type matches one of the stateful type globs: the
    data in them is lost unless someone has planned for it."""
    return [
        c
        for c in plan.changes
        if c.action in ("delete", "replace") and any(fnmatch.fnmatchcase(c.type, p) for p in stateful_types)
    ]
