"""Delivery history beside the commits: row schemas of deployments, incidents and test runs, and the pure
rules that link them (incident → deployment, deployment → failed, deployment → shipped commits) and
measure test flakiness.

Input schemas (CSV with a header, or JSON lines; times ISO 8601, naive times are UTC):
- deployments: `deploy_id, service, environment, sha, started_at, finished_at, strategy, outcome`
  strategy ∈ full | rolling | canary | blue-green | recreate; outcome ∈ succeeded | failed | rolled-back |
  cancelled | aborted | paused (Argo Rollouts' words: aborted = stopped and rolled back by a person or by
  awo, a failure like rolled-back; paused = holding, not finished, so `finished_at` stays empty and the row
  is no training label until a later row with the same deploy_id gives the final outcome). `finished_at`
  may be empty for a deployment still running.
- incidents: `incident_id, service, severity, started_at, resolved_at, deploy_id, sha, summary`
  severity ∈ low | medium | high | critical (or SEV1–SEV4, SEV1 = critical); `resolved_at`, `deploy_id`,
  `sha` may be empty.
- test runs: `run_id, sha, suite, test_id, duration_s, outcome, attempt[, started_at]`
  outcome ∈ passed | failed | skipped | flaky; attempt ≥ 1 (retries of the same run count up); `started_at`
  (optional, may be empty) puts runs in time order for test prioritisation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Literal

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

# How a deployment's outcome counts in the labelled table: a failure, no label yet, or a success (the rest:
# succeeded, and cancelled — stopped before it changed anything).
FAILED_OUTCOMES = ("failed", "rolled-back", "aborted")
UNFINISHED_OUTCOMES = ("paused",)
SEVERITY_LEVEL = {"low": 1, "medium": 2, "high": 3, "critical": 4}
_SEV_ALIASES = {"sev1": "critical", "sev2": "high", "sev3": "medium", "sev4": "low"}
_SHA = re.compile(r"^[0-9a-f]{7,40}$")


def _utc(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _blank_to_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, float) and value != value:  # NaN from an empty CSV cell
        return None
    return value


def _sha(value: object) -> object:
    value = _blank_to_none(value)
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _SHA.match(text):
        raise ValueError(f"not a commit sha (7-40 hex digits): {value!r}")
    return text


def _lower(value: object) -> object:
    return value.strip().lower().replace("_", "-") if isinstance(value, str) else value


def _severity(value: object) -> object:
    text = _lower(value)
    return _SEV_ALIASES.get(text, text) if isinstance(text, str) else value


Time = Annotated[datetime, BeforeValidator(_utc)]
OptionalTime = Annotated[datetime | None, BeforeValidator(_utc)]
Sha = Annotated[str, BeforeValidator(_sha)]
OptionalSha = Annotated[str | None, BeforeValidator(_sha)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class DeploymentRow(_Row):
    deploy_id: Name
    service: Name
    environment: Name
    sha: Sha
    started_at: Time
    finished_at: OptionalTime = None
    strategy: Annotated[
        Literal["full", "rolling", "canary", "blue-green", "recreate"], BeforeValidator(_lower)
    ]
    outcome: Annotated[
        Literal["succeeded", "failed", "rolled-back", "cancelled", "aborted", "paused"],
        BeforeValidator(_lower),
    ]

    @model_validator(mode="after")
    def _finished_after_start(self) -> DeploymentRow:
        if self.finished_at is not None and self.finished_at < self.started_at:
            raise ValueError("finished_at is before started_at")
        if self.finished_at is not None and self.outcome in UNFINISHED_OUTCOMES:
            raise ValueError(f"finished_at is set but outcome {self.outcome} is not finished")
        return self


class IncidentRow(_Row):
    incident_id: Name
    service: Name
    severity: Annotated[Literal["low", "medium", "high", "critical"], BeforeValidator(_severity)]
    started_at: Time
    resolved_at: OptionalTime = None
    deploy_id: OptionalText = None
    sha: OptionalSha = None
    summary: Annotated[str, Field(max_length=2000)] = ""

    @model_validator(mode="after")
    def _resolved_after_start(self) -> IncidentRow:
        if self.resolved_at is not None and self.resolved_at < self.started_at:
            raise ValueError("resolved_at is before started_at")
        return self


class TestRunRow(_Row):
    run_id: Name
    sha: Sha
    suite: Name
    test_id: Annotated[str, Field(min_length=1, max_length=1000)]
    duration_s: Annotated[float, Field(ge=0, le=7 * 86_400)]
    outcome: Annotated[Literal["passed", "failed", "skipped", "flaky"], BeforeValidator(_lower)]
    attempt: Annotated[int, Field(ge=1, le=100)] = 1
    started_at: OptionalTime = None


KINDS: dict[str, tuple[type[_Row], tuple[str, ...]]] = {
    # kind: (row model, key columns: a row with the same key replaces the earlier one)
    "deployments": (DeploymentRow, ("deploy_id",)),
    "incidents": (IncidentRow, ("incident_id",)),
    "test-runs": (TestRunRow, ("run_id", "suite", "test_id", "attempt")),
}


# --- linking -----------------------------------------------------------------------------------


def link_incidents(incidents: pd.DataFrame, deployments: pd.DataFrame, window: pd.Timedelta) -> pd.DataFrame:
    """`incidents` with `linked_deploy_id` and `link_rule`: the deployment the incident names (by
    deploy_id, else by sha and service), or else the most recent deployment of the same service that
    started before the incident, within `window`."""
    out = incidents.copy()
    linked: list[str | None] = []
    rules: list[str] = []
    by_id = set(deployments["deploy_id"]) if not deployments.empty else set()
    by_service = (
        {s: g.sort_values("started_at") for s, g in deployments.groupby("service")}
        if len(deployments)
        else {}
    )
    for row in out.itertuples():
        if isinstance(row.deploy_id, str) and row.deploy_id in by_id:
            linked.append(row.deploy_id)
            rules.append("named deploy_id")
            continue
        candidates = by_service.get(row.service)
        before = None
        if candidates is not None:
            before = candidates[(candidates["started_at"] <= row.started_at)
                                & (candidates["started_at"] >= row.started_at - window)]  # fmt: skip
        if before is not None and isinstance(row.sha, str):
            named = before[before["sha"].str.startswith(row.sha)]
            if not named.empty:
                linked.append(named.iloc[-1]["deploy_id"])
                rules.append("named sha")
                continue
        if before is not None and not before.empty:
            linked.append(before.iloc[-1]["deploy_id"])
            rules.append("latest deployment of the service in the window")
        else:
            linked.append(None)
            rules.append("no deployment of the service in the window")
    out["linked_deploy_id"] = linked
    out["link_rule"] = rules
    return out


def label_deployments(
    deployments: pd.DataFrame, linked_incidents: pd.DataFrame, min_severity: str, window: pd.Timedelta
) -> pd.DataFrame:
    """`deployments` with `failed` and `failure_reason`: failed when the outcome says so (FAILED_OUTCOMES),
    or when an incident of at least `min_severity` links to it and started within `window` of the
    deployment. Rows of an UNFINISHED_OUTCOMES outcome are labelled too; `finished_deployments` drops them."""
    out = deployments.copy()
    level = SEVERITY_LEVEL[min_severity]
    serious = (
        linked_incidents[linked_incidents["severity"].map(SEVERITY_LEVEL) >= level]
        if len(linked_incidents)
        else linked_incidents
    )
    first_incident: dict[str, str] = {}
    if len(serious):
        start = dict(zip(out["deploy_id"], out["started_at"], strict=True))
        for inc in serious.sort_values("started_at").itertuples():
            d = inc.linked_deploy_id
            if isinstance(d, str) and d in start and inc.started_at - start[d] <= window:
                first_incident.setdefault(d, inc.incident_id)
    reasons: list[str | None] = []
    for row in out.itertuples():
        if row.outcome in FAILED_OUTCOMES:
            reasons.append(f"outcome {row.outcome}")
        elif row.deploy_id in first_incident:
            reasons.append(f"incident {first_incident[row.deploy_id]}")
        else:
            reasons.append(None)
    out["failure_reason"] = reasons
    out["failed"] = out["failure_reason"].notna()
    return out


def finished_deployments(labelled: pd.DataFrame) -> pd.DataFrame:
    """The deployments whose label is known: a paused one holds until a later row of the same deploy_id
    gives its final outcome, so neither success nor failure may be read off it yet."""
    return labelled[~labelled["outcome"].isin(UNFINISHED_OUTCOMES)].reset_index(drop=True)


def shipped_commits(
    deployments: pd.DataFrame, parents: dict[str, list[str]], service_commits: dict[str, set[str]]
) -> pd.DataFrame:
    """`deployments` with `sha_known`, `first_deploy` and `shipped` (list of shas): the commits reachable
    from the deployment's sha and not from the previous deployment's sha of the same service and
    environment, restricted to commits touching the service's paths (`service_commits`)."""
    out = deployments.sort_values(["service", "environment", "started_at"]).copy()
    known = out["sha"].map(lambda s: resolve_sha(s, parents))
    shipped: list[list[str]] = []
    first: list[bool] = []
    reachable: dict[tuple[str, str], tuple[str, set[str]]] = {}  # last sha and all its ancestors
    for row, sha in zip(out.itertuples(), known, strict=True):
        key = (row.service, row.environment)
        first.append(key not in reachable)
        if sha is None:  # not in the mined history: nothing known about what it shipped
            shipped.append([])
            reachable.setdefault(key, ("", set()))
            continue
        previous, before = reachable.get(key, ("", set()))
        new, met = _ancestors(sha, parents, before)
        # Ancestors of this sha: those of the previous one plus the new, when the previous is an ancestor.
        reachable[key] = (sha, before | new if previous in met else _ancestors(sha, parents, set())[0])
        shipped.append(sorted(new & service_commits.get(row.service, set())))
    out["sha_known"] = known.notna().to_numpy()
    out["first_deploy"] = first
    out["shipped"] = shipped
    return out.sort_values("started_at", kind="stable").reset_index(drop=True)


def resolve_sha(prefix: str, parents: dict[str, list[str]]) -> str | None:
    if prefix in parents:
        return prefix
    if len(prefix) == 40:
        return None
    matches = [s for s in parents if s.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


def _ancestors(head: str, parents: dict[str, list[str]], stop: set[str]) -> tuple[set[str], set[str]]:
    """Commits reachable from `head` (itself included) without passing through `stop`, and the commits of
    `stop` that were met on the way."""
    seen: set[str] = set()
    met: set[str] = set()
    stack = [head]
    while stack:
        sha = stack.pop()
        if sha in seen or sha not in parents:
            continue
        if sha in stop:
            met.add(sha)
            continue
        seen.add(sha)
        stack.extend(parents[sha])
    return seen, met


def flakiness(runs: pd.DataFrame) -> pd.DataFrame:
    """Per test (`suite, test_id`): runs, failures, the flake rate — the share of commits on which the test
    both failed and passed (or was reported flaky) among the commits it ran on — and durations."""
    columns = ["suite", "test_id", "runs", "shas", "failures", "flaky_shas", "flake_rate", "fail_rate",
               "mean_duration_s", "p90_duration_s", "last_run_sha"]  # fmt: skip
    executed = runs[runs["outcome"] != "skipped"]
    if executed.empty:
        return pd.DataFrame(columns=columns)
    marks = executed.assign(
        passed=executed["outcome"] == "passed",
        failed=executed["outcome"] == "failed",
        flaky=executed["outcome"] == "flaky",
    )
    per_sha = marks.groupby(["suite", "test_id", "sha"])[["passed", "failed", "flaky"]].any()
    per_sha["flaky_sha"] = (per_sha["passed"] & per_sha["failed"]) | per_sha["flaky"]
    per_test = per_sha.groupby(level=["suite", "test_id"]).agg(
        shas=("flaky_sha", "size"), flaky_shas=("flaky_sha", "sum")
    )
    grouped = marks.groupby(["suite", "test_id"])
    stats = grouped.agg(
        runs=("outcome", "size"),
        failures=("failed", "sum"),
        mean_duration_s=("duration_s", "mean"),
        last_run_sha=("sha", "last"),
    )
    stats["p90_duration_s"] = grouped["duration_s"].quantile(0.9)
    table = stats.join(per_test).reset_index()
    table["flake_rate"] = table["flaky_shas"] / table["shas"]
    table["fail_rate"] = table["failures"] / table["runs"]
    return (
        table[columns]
        .sort_values(["flake_rate", "suite", "test_id"], ascending=[False, True, True])
        .reset_index(drop=True)
    )


def iter_field_errors(error: ValidationError) -> Iterable[tuple[str, str]]:
    """(field, reason) pairs of a pydantic ValidationError."""
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "row"
        reason = item["msg"].removeprefix("Value error, ")
        yield field, reason
