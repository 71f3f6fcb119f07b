"""The decision policy: a versioned YAML file validated here (the default is `agents/default_policy.yaml`).
It bounds every decision: bands and their gates, mandatory gates, test budgets, rollout templates, deploy
windows and traffic-peak rules, who may override, the gate to apply when scoring fails, and the repairs the
diagnostic agent may propose after an incident."""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.gating import RiskBands
from agents.vocabulary import BANDS, Band, FileKindName, Gate, Strategy, gate_level
from features.topology import Criticality
from features.yamlfile import load_yaml_model

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_POLICY = Path(__file__).resolve().parent / "default_policy.yaml"
_DURATION = re.compile(r"^(\d+)(s|m|h)$")
RepairKind = Literal["rollback", "restart", "scale_out", "flag_off"]
REPAIR_KINDS: tuple[RepairKind, ...] = ("rollback", "restart", "scale_out", "flag_off")


def duration_seconds(text: str) -> int:
    """Argo Rollouts' duration words: `30s`, `5m`, `1h`."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration like 30s, 5m or 1h: {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


Duration = Annotated[str, Field(pattern=_DURATION.pattern, examples=["30s", "5m", "1h"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BandGates(_Strict):
    """The gate each risk band gets before any rule tightens it."""

    low: Gate = "fast_track"
    medium: Gate = "standard"
    high: Gate = "senior_review"
    critical: Gate = "block"

    @model_validator(mode="after")
    def _monotone(self) -> BandGates:
        levels = [gate_level(getattr(self, band)) for band in BANDS]
        if levels != sorted(levels):
            raise ValueError("a riskier band cannot get a looser gate than a safer one")
        return self


class Condition(_Strict):
    """When a rule applies: all given parts must hold (an empty condition never applies)."""

    file_kinds: list[FileKindName] = Field(
        default_factory=list, description="any changed file is one of these kinds"
    )
    paths: list[str] = Field(default_factory=list, description="any changed file matches one of these globs")
    services: list[str] = Field(default_factory=list, description="the change touches one of these services")
    min_criticality: Literal["low", "medium", "high", "critical"] | None = Field(
        default=None, description="a touched service is at least this critical"
    )
    only_file_kinds: list[FileKindName] = Field(
        default_factory=list, description="every changed file is one of these kinds"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        if not (
            self.file_kinds or self.paths or self.services or self.min_criticality or self.only_file_kinds
        ):
            raise ValueError("a condition needs at least one of file_kinds, paths, services, min_criticality")
        return self


class Rule(_Strict):
    """A mandatory gate: when the condition holds, require suites, a gate at least this tight, or both."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    when: Condition
    min_gate: Gate | None = None
    max_gate: Gate | None = Field(
        default=None, description="loosen to at most this gate (only for `only_file_kinds` rules)"
    )
    require_suites: list[str] = Field(default_factory=list)
    reason: str = Field(min_length=1, max_length=300)

    @model_validator(mode="after")
    def _does_something(self) -> Rule:
        if not (self.min_gate or self.max_gate or self.require_suites):
            raise ValueError("a rule needs min_gate, max_gate or require_suites")
        if self.max_gate and not self.when.only_file_kinds:
            raise ValueError("max_gate may only relax changes limited by `only_file_kinds`")
        return self


class Suite(_Strict):
    """A test suite the plan can schedule, and where it runs."""

    resource: str = Field(
        min_length=1, description="where it runs: unit-runner, integration-env, perf-env ..."
    )
    tests: list[str] = Field(
        default_factory=list,
        description="globs of test ids or suite names in the test history that belong to it",
    )
    runs_for: list[FileKindName] = Field(
        default_factory=list,
        description="file kinds that schedule this suite (empty: only when a rule or band requires it)",
    )
    cost_s: float = Field(default=60, ge=0, description="expected duration when the history has no timing")


def _default_budgets() -> dict[Band, float]:
    return {"low": 600.0, "medium": 1800.0, "high": 3600.0, "critical": 7200.0}


def _window_bands() -> list[Band]:
    return ["medium", "high", "critical"]


class TestPolicy(_Strict):
    budget_s: dict[Band, Annotated[float, Field(gt=0)]] = Field(
        default_factory=_default_budgets,
        description="test time per band, seconds",
    )
    suites_by_band: dict[Band, list[str]] = Field(
        default_factory=dict, description="suites every change of the band runs"
    )
    flaky_retries: int = Field(default=2, ge=0, le=10, description="retries of a failing known-flaky test")
    flaky_blocking_below: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="a failing test with a flake rate below this blocks even after a passing retry",
    )


class Analysis(_Strict):
    """An analysis metric in the vocabulary of Argo Rollouts' AnalysisTemplate."""

    name: str = Field(min_length=1)
    metric: Literal["error_rate", "latency_p99_ms", "saturation"] = "error_rate"
    interval: Duration = "1m"
    count: int = Field(default=5, ge=1, le=1000)
    failure_limit: int = Field(default=1, ge=0)
    inconclusive_limit: int = Field(default=1, ge=0)
    success_condition: str = Field(
        default="result <= 0.01", pattern=r"^result\s*(<|<=|>|>=)\s*[0-9.]+(e-?\d+)?$"
    )


class Step(_Strict):
    """`set_weight` (percent of traffic to the new version) or `pause` (a duration), as Argo's steps."""

    set_weight: int | None = Field(default=None, ge=0, le=100)
    pause: Duration | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        if (self.set_weight is None) == (self.pause is None):
            raise ValueError("a step is either set_weight or pause")
        return self


class RolloutTemplate(_Strict):
    strategy: Strategy
    steps: list[Step] = Field(default_factory=list)
    analysis: list[Analysis] = Field(default_factory=list)
    bake_time: Duration = "0s"

    @model_validator(mode="after")
    def _weights_rise(self) -> RolloutTemplate:
        weights = [s.set_weight for s in self.steps if s.set_weight is not None]
        if weights != sorted(weights):
            raise ValueError("set_weight steps must not decrease")
        if self.strategy == "canary" and not weights:
            raise ValueError("a canary needs set_weight steps")
        return self


class Window(_Strict):
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS[:5]))
    start: time = time(9, 0)
    end: time = time(17, 0)

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Schedule(_Strict):
    """When to deploy. Times are UTC. A window list that is empty means any time."""

    windows: list[Window] = Field(default_factory=lambda: [Window()])
    windows_for: list[Band] = Field(
        default_factory=_window_bands,
        description="bands that must wait for a window (low-risk changes may ship any time)",
    )
    avoid_peak_share: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="no deploy starts in an hour forecast above this share of the week's peak traffic",
    )
    lookahead_hours: int = Field(default=168, ge=1, le=24 * 31, description="how far to search for a slot")


class Environment(_Strict):
    """Production's state tightens gates."""

    open_incident_gate: Gate = Field(
        default="senior_review",
        description="at least this gate while the service has an open high/critical incident",
    )
    budget_exhausted_gate: Gate = Field(
        default="senior_review", description="at least this gate when the service's error budget is spent"
    )
    budget_low_share: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="below this share of error budget left, use the next band's rollout",
    )


class Overrides(_Strict):
    """Who may override a gate: identities (token names or user names); `*` means anyone."""

    allowed: list[str] = Field(default_factory=list)
    may_unblock: list[str] = Field(
        default_factory=list, description="who may lift a `block` (a subset of `allowed`)"
    )


def _all_repairs() -> list[RepairKind]:
    return list(REPAIR_KINDS)


def _culprit_repairs() -> list[RepairKind]:
    return ["rollback", "flag_off", "restart"]


def _no_culprit_repairs() -> list[RepairKind]:
    return ["restart", "scale_out"]


class RepairPolicy(_Strict):
    """What the diagnostic agent may do about an incident (agents/diagnosis.py): the allowed repairs, the
    order it tries them in, and which need a person's approval first."""

    allowed: list[RepairKind] = Field(default_factory=_all_repairs, description="repairs that may run")
    on_culprit: list[RepairKind] = Field(
        default_factory=_culprit_repairs,
        description="preference order when a deployment is blamed (acts on the culprit's service)",
    )
    on_no_culprit: list[RepairKind] = Field(
        default_factory=_no_culprit_repairs,
        description="preference order when no deployment is blamed (acts on the incident's service)",
    )
    approval_from: dict[RepairKind, Criticality] = Field(
        default_factory=dict,
        description="a repair of a service at least this critical waits for a person's approval",
    )
    scale_out_replicas: int = Field(default=4, ge=1, le=1000, description="scale_out: the new total")
    flags: dict[str, Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w.-]*$")]] = (
        Field(default_factory=dict, description="service → the feature flag guarding its new code (flag_off)")
    )

    @model_validator(mode="after")
    def _preferences_allowed(self) -> RepairPolicy:
        for name in ("on_culprit", "on_no_culprit"):
            unknown = [k for k in getattr(self, name) if k not in self.allowed]
            if unknown:
                raise ValueError(f"{name}: {unknown} are not among the allowed repairs {self.allowed}")
        if "rollback" in self.on_no_culprit:
            raise ValueError("on_no_culprit: a rollback needs a deployment to blame")
        return self


class Monitoring(_Strict):
    """What the monitoring agent does when a metric stream alone turns anomalous during a bake time (after a
    full or blue-green rollout, agents/watch.py)."""

    on_anomaly: Literal["rollback", "pause", "incident"] = Field(
        default="rollback",
        description="rollback: fail the watch (the plan rolls back, blocks and opens an incident); "
        "pause: hold for a person; incident: record an incident and go on",
    )
    history_intervals: int = Field(
        default=300,
        ge=1,
        le=10_000,
        description="intervals of history before the rollout that warm the detector",
    )


def _stateful_types() -> list[str]:
    return [
        "aws_db_instance",
        "aws_rds_*",
        "aws_dynamodb_table",
        "aws_elasticache_*",
        "aws_ebs_volume",
        "aws_efs_file_system",
        "aws_s3_bucket",
        "google_sql_database*",
        "google_bigtable_instance",
        "google_spanner_*",
        "google_compute_disk",
        "google_storage_bucket",
        "azurerm_*_database",
        "azurerm_*_server",
        "azurerm_managed_disk",
        "azurerm_storage_account",
        "kubernetes_persistent_volume*",
    ]


class TerraformPolicy(_Strict):
    """Terraform plans (`terraform show -json`): where a change carries one, and which resources hold data
    whose destroy or replacement needs a person."""

    plan_files: list[str] = Field(
        default_factory=lambda: ["*.tfplan.json", "terraform-plan.json"],
        description="file-name globs of a plan committed in the change (when --terraform-plan is not given)",
    )
    stateful_types: list[str] = Field(
        default_factory=_stateful_types, description="resource type globs that hold data"
    )
    stateful_gate: Gate = Field(
        default="senior_review",
        description="at least this gate when a stateful resource is destroyed or replaced",
    )
    review_resource: str = Field(default="infra-review", min_length=1, description="who reviews the plan")


class AnsiblePolicy(_Strict):
    """Ansible: which changed files are playbooks and roles, and the check-mode run they get."""

    paths: list[str] = Field(
        default_factory=lambda: [
            "playbooks/*",
            "roles/*",
            "ansible/*",
            "*.playbook.yml",
            "*.playbook.yaml",
            "site.yml",
        ],
        description="globs of playbook and role files (fnmatch: `*` crosses folders)",
    )
    site_playbook: str = Field(
        default="site.yml", min_length=1, description="the playbook checked when a role or vars file changes"
    )
    inventory: str | None = Field(default=None, description="`-i` of the check run (none: ansible's default)")
    connection: str | None = Field(default=None, description="`-c` of the check run (`local` for localhost)")
    resource: str = Field(default="ansible-runner", min_length=1)


Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
SarifLevel = Literal["none", "note", "warning", "error"]


def severity_rank(severity: Severity) -> int:
    return SEVERITIES.index(severity)


class SecuritySeverityScale(_Strict):
    """Lower bounds of a `security-severity` score (CVSS-like, 0-10) per severity: GitHub code scanning's
    scale (9.0 critical, 7.0 high, 4.0 medium, 0.1 low; below that, info)."""

    critical: float = Field(default=9.0, ge=0, le=10)
    high: float = Field(default=7.0, ge=0, le=10)
    medium: float = Field(default=4.0, ge=0, le=10)
    low: float = Field(default=0.1, ge=0, le=10)

    @model_validator(mode="after")
    def _descending(self) -> SecuritySeverityScale:
        if not self.critical >= self.high >= self.medium >= self.low:
            raise ValueError("bounds must not rise from critical down to low")
        return self

    def severity_of(self, score: float) -> Severity:
        names: tuple[Severity, ...] = ("critical", "high", "medium", "low")
        for name in names:
            if score >= getattr(self, name):
                return name
        return "info"


def _level_severities() -> dict[SarifLevel, Severity]:
    return {"error": "high", "warning": "medium", "note": "low", "none": "info"}


class SecurityRule(_Strict):
    """A gate a new security finding raises: at least `min_severity`, in a service at least
    `min_criticality` (when given), on a line the change adds (unless `on_changed_lines_only` is off)."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    min_severity: Severity
    min_criticality: Criticality | None = None
    on_changed_lines_only: bool = True
    gate: Gate
    reason: str = Field(min_length=1, max_length=300)


def _security_rules() -> list[SecurityRule]:
    return [
        SecurityRule(
            name="new-high-finding-blocks",
            min_severity="high",
            gate="block",
            reason="a new high or critical security finding blocks the change",
        ),
        SecurityRule(
            name="new-medium-in-critical-service",
            min_severity="medium",
            min_criticality="critical",
            gate="senior_review",
            reason="a new medium security finding in a critical service needs a senior review",
        ),
    ]


class SecurityPolicy(_Strict):
    """Security findings (SARIF 2.1.0, agents/security.py): how a finding's severity is read, and the gates
    new findings raise. A finding that is not new, or not on a changed line, is reported and never gates
    unless a rule turns `on_changed_lines_only` off."""

    security_severity: SecuritySeverityScale = Field(default_factory=SecuritySeverityScale)
    levels: dict[SarifLevel, Severity] = Field(
        default_factory=_level_severities,
        description="severity of a result without a security-severity score, by its SARIF level",
    )
    rules: list[SecurityRule] = Field(default_factory=_security_rules)

    @field_validator("levels")
    @classmethod
    def _every_level(cls, levels: dict[SarifLevel, Severity]) -> dict[SarifLevel, Severity]:
        missing = [lv for lv in ("none", "note", "warning", "error") if lv not in levels]
        if missing:
            raise ValueError(f"a severity for every SARIF level is needed; missing {missing}")
        return levels


def _must_equal() -> list[str]:
    return [
        "*timeout*",
        "*retries",
        "*retry*",
        "feature_flags.*",
        "features.*",
        "*schema_version",
        "*api_version",
    ]


def _may_differ() -> list[str]:
    return ["*host", "*hosts", "*url", "*endpoint", "*replicas", "*pool.size", "log_level", "*.log_level"]


def _reference_values() -> list[str]:
    return ["${*}", "$(*)", "{{*}}", "vault:*", "ref+*", "secretRef:*", "arn:aws:secretsmanager:*", "sm://*"]


class ConfigRules(_Strict):
    """`awo config diff|check`: which keys must be equal in every environment, which may differ, which may be
    missing, and what is not a plain-text secret. Globs over flattened keys (`db.pool.size`)."""

    must_equal: list[str] = Field(default_factory=_must_equal, description="keys whose values must match")
    may_differ: list[str] = Field(
        default_factory=_may_differ, description="keys allowed to differ (wins over must_equal)"
    )
    may_be_missing: list[str] = Field(default_factory=list, description="keys an environment may leave out")
    reference_values: list[str] = Field(
        default_factory=_reference_values, description="values that point at a secret store: never secrets"
    )
    reference_keys: list[str] = Field(
        default_factory=lambda: ["secretRef", "secretKeyRef", "valueFrom", "existingSecret"],
        description="a key part that makes the value a reference (`password.secretRef`)",
    )
    not_secret_keys: list[str] = Field(
        default_factory=list, description="keys whose values are never reported as secrets (checksums, ids)"
    )


class Policy(_Strict):
    version: Annotated[str, Field(min_length=1, max_length=64, description="recorded with every decision")]
    risk_bands: RiskBands = Field(default_factory=RiskBands)
    gates: BandGates = Field(default_factory=BandGates)
    rules: list[Rule] = Field(default_factory=list)
    suites: dict[str, Suite] = Field(default_factory=dict)
    tests: TestPolicy = Field(default_factory=TestPolicy)
    rollout: dict[Band, RolloutTemplate]
    schedule: Schedule = Field(default_factory=Schedule)
    environment: Environment = Field(default_factory=Environment)
    overrides: Overrides = Field(default_factory=Overrides)
    on_error: Gate = Field(default="senior_review", description="the gate when the change cannot be scored")
    top_drivers: int = Field(default=3, ge=0, le=20, description="risk drivers quoted in the reasons")
    repair: RepairPolicy = Field(default_factory=RepairPolicy)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    terraform: TerraformPolicy = Field(default_factory=TerraformPolicy)
    ansible: AnsiblePolicy = Field(default_factory=AnsiblePolicy)
    config: ConfigRules = Field(default_factory=ConfigRules)
    security: SecurityPolicy = Field(default_factory=SecurityPolicy)

    @field_validator("rollout")
    @classmethod
    def _every_band(cls, rollout: dict[Band, RolloutTemplate]) -> dict[Band, RolloutTemplate]:
        missing = [band for band in BANDS if band not in rollout]
        if missing:
            raise ValueError(f"a rollout template for every band is needed; missing {missing}")
        return rollout

    @model_validator(mode="after")
    def _suites_exist(self) -> Policy:
        named = [s for rule in self.rules for s in rule.require_suites]
        named += [s for suites in self.tests.suites_by_band.values() for s in suites]
        unknown = sorted(set(named) - set(self.suites))
        if unknown:
            raise ValueError(f"suites {unknown} are used but not declared under `suites:`")
        return self


def load_policy(path: Path | None = None) -> Policy:
    """The policy file (default: the packaged one). A bad file is an error naming the file and the field."""
    return load_yaml_model(Path(path) if path is not None else DEFAULT_POLICY, Policy, "policy")
