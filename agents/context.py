"""What a decision is made from: the change (commits, files, risk, Terraform plan, security findings), its
services and their state, the test history, and the time. Plain data, assembled at the edges
(agents/assemble.py), read by `decide`."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.security import SecurityScan
from agents.terraform import TerraformPlan
from agents.vocabulary import FileKindName
from features.classify import file_kind
from features.topology import Topology


class ChangedFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    lines_added: int = 0
    lines_deleted: int = 0
    service: str
    kinds: tuple[FileKindName, ...]

    @classmethod
    def of(cls, path: str, service: str, lines_added: int = 0, lines_deleted: int = 0) -> ChangedFile:
        return cls(
            path=path,
            service=service,
            lines_added=lines_added,
            lines_deleted=lines_deleted,
            kinds=kinds_of(path),
        )


SOURCE_EXTENSIONS = frozenset(
    [
        ".py",
        ".pyx",
        ".go",
        ".java",
        ".kt",
        ".kts",
        ".scala",
        ".js",
        ".jsx",
        ".mjs",
        ".ts",
        ".tsx",
        ".rb",
        ".php",
        ".cs",
        ".c",
        ".cc",
        ".cpp",
        ".cxx",
        ".h",
        ".hpp",
        ".rs",
        ".swift",
        ".m",
        ".mm",
        ".sh",
        ".bash",
        ".sql",
        ".lua",
        ".pl",
        ".ex",
        ".exs",
        ".erl",
        ".clj",
        ".dart",
        ".vue",
        ".svelte",
    ]
)


def kinds_of(path: str) -> tuple[FileKindName, ...]:
    """The policy's file kinds of a path: the mining flags, and `code` for a file that is none of them or
    has a source extension wherever it lies (`docs/conf.py`, `lang/charge.py` and `history.py` are code:
    a folder or a name must never make code look like text to a rule that relaxes the gate)."""
    kind = file_kind(path)
    source = PurePosixPath(path).suffix.lower() in SOURCE_EXTENSIONS
    kinds: list[FileKindName] = []
    for flag, name in (
        (kind.is_test, "test"),
        (kind.is_docs, "docs"),
        (kind.is_config, "config"),
        (kind.is_migration, "migration"),
        (kind.is_ui_text, "ui_text"),
    ):
        if flag:
            kinds.append(name)  # type: ignore[arg-type]  # the literal names above
    if source or not kinds:
        kinds.append("code")
    return tuple(kinds)


class RiskDriver(BaseModel):
    model_config = ConfigDict(frozen=True)
    feature: str
    value: float | None
    contribution: float  # log-odds pushed by this feature (positive: riskier)


class Risk(BaseModel):
    """The change's calibrated risk and what drives it (from the scoring core or the risk API)."""

    model_config = ConfigDict(frozen=True)
    probability: float = Field(ge=0, le=1)
    drivers: list[RiskDriver] = Field(default_factory=list)
    features: dict[str, float | None] = Field(default_factory=dict)
    model_name: str
    model_version: str
    model_kind: str | None = None
    reference: dict[str, float] = Field(
        default_factory=dict, description="the model's training-period reference (base rate, score quantiles)"
    )
    warnings: list[str] = Field(default_factory=list)


class OpenIncident(BaseModel):
    model_config = ConfigDict(frozen=True)
    incident_id: str
    severity: str
    started_at: datetime


class ServiceState(BaseModel):
    """A service's production state as of the decision: traffic forecast, error budget, incidents."""

    model_config = ConfigDict(frozen=True)
    traffic_forecast: list[float] = Field(
        default_factory=list, description="forecast requests per hour, from the decision's hour on"
    )
    traffic_peak: float | None = Field(
        default=None, description="the highest hourly traffic of a typical week"
    )
    error_budget_left: float | None = Field(
        default=None, description="share of the SLO's error budget left in its window (negative: overspent)"
    )
    open_incidents: list[OpenIncident] = Field(default_factory=list)


class ChangeContext(BaseModel):
    """Everything `decide` reads. Commit messages are untrusted text: only the LLM prompt quotes them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    repo: str
    shas: list[str] = Field(description="the change's commits, newest first")
    base: str | None = None
    environment: str = "production"
    files: list[ChangedFile]
    services: list[str] = Field(description="services the change ships (from its files, or given)")
    messages: list[str] = Field(default_factory=list)
    risk: Risk | None = None
    risk_error: str | None = Field(default=None, description="why the change could not be scored")
    test_history: Any = Field(default=None, exclude=True, description="agents.test_allocation.TestHistory")
    topology: Topology = Field(default_factory=Topology)
    service_states: dict[str, ServiceState] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list, description="inputs that could not be read")
    terraform: TerraformPlan | None = Field(
        default=None,
        description="the change's Terraform plan (`--terraform-plan`, or a plan file it commits)",
    )
    security: SecurityScan | None = Field(
        default=None,
        description="the change's security findings (`--sarif`, or stored with `awo ingest security`)",
    )
    now: datetime

    @field_validator("now")
    @classmethod
    def _utc(cls, now: datetime) -> datetime:
        """Deploy windows are in UTC: a naive time is UTC, an aware one is converted."""
        return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)

    def kinds(self) -> set[str]:
        return {k for f in self.files for k in f.kinds}

    def digest(self) -> str:
        """SHA-256 of the inputs as JSON (recorded in the audit log; the test history by its summary)."""
        body = self.model_dump(mode="json")
        history = self.test_history
        body["test_history"] = (
            None if history is None else getattr(history, "summary", lambda: repr(history))()
        )
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()
