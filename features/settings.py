"""One typed settings object for the whole system, read from `AWO_*` environment variables and an
optional YAML file (`AWO_CONFIG`); passed down explicitly, never read at import time.

Settings are grouped in sections, one per stage (data, models, serving, agents). `Settings` is all
of them in one object, and the environment names stay flat (`AWO_DATA_DIR`, `AWO_MAX_BATCH`), so a
function that needs only one stage can say so in its signature (`settings: ServingSettings`). The YAML file
may be flat or sectioned (`serving: {max_batch: 500}`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from features.errors import BadConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("data", "models", "serving", "agents", "hosts")
_PATH_SEPARATORS = re.compile(r"[/\\\x00]")


class _SectionedYamlSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source over the file named by `AWO_CONFIG`, with section mappings
    (`data:`, `serving:` ...) flattened into the setting names they hold. Lower precedence than the
    environment. A missing or malformed file is an error naming it, not an empty configuration."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        import yaml

        if path is not None and not path.is_file():
            raise BadConfig(f"config file {path} (AWO_CONFIG) does not exist")
        try:
            super().__init__(settings_cls, yaml_file=path or [])
        except yaml.YAMLError as exc:
            raise BadConfig(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(self.yaml_data, dict):
            raise BadConfig(f"config file {path} must hold a mapping of setting names to values")
        flat: dict[str, Any] = {}
        for key, value in self.yaml_data.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise BadConfig(f"config file {path}: section {key!r} must be a mapping")
                flat.update(value)
            else:
                flat[key] = value
        self.yaml_data = flat
        self.init_kwargs = flat


Scope = Literal[
    "risk:read",
    "models:reload",
    "decisions:read",
    "decisions:write",
    "decisions:override",
    "decisions:approve",  # the decisions page's approve and override forms (agents.pages)
]
SCOPES: tuple[str, ...] = get_args(Scope)


class ApiToken(BaseModel):
    """An API token as stored in configuration: its SHA-256 digest, never the token itself."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(min_length=1)


class DataSettings(BaseModel):
    """Mining, labels, delivery history and the feature store: where data lives and how it is read."""

    data_dir: Path = Field(
        default=PROJECT_ROOT / "data",
        description="data root: every table, store and registry lives below it",
    )
    pseudonymize: bool = Field(
        default=False, description="replace author names and emails by a salted hash in every table"
    )
    identity_salt: str = Field(default="awo-default-salt", description="salt of author pseudonyms")
    bot_patterns: list[str] = Field(
        default_factory=list, description="extra regular expressions that mark an author as a bot"
    )
    service_map: Path | None = Field(
        default=None, description="YAML file mapping path globs to service names"
    )
    label_maturity_days: float = Field(
        default=180.0,
        ge=0,
        description="a commit younger than this (before the newest) keeps a label only if a fix blamed it",
    )
    incident_window_hours: float = Field(
        default=48.0, gt=0, description="an incident links to a deployment that started this long before it"
    )
    incident_min_severity: Literal["low", "medium", "high", "critical"] = Field(
        default="high", description="incidents at least this severe mark their deployment failed"
    )
    online_store: str | None = Field(
        default=None,
        description="Feast online store: redis://HOST:PORT (default: SQLite under the data root)",
    )
    checkpoint_seconds: float = Field(
        default=30.0, gt=0, description="a long mining run saves what it has at this interval"
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster that --ray jobs run on when no address is given: 'auto', HOST:PORT or "
        "ray://HOST:PORT (default: a single-machine cluster started by the job)",
    )
    offline_store: Literal["file", "ray"] = Field(
        default="file",
        description="Feast offline store and compute engine: file (pandas in this process) or ray "
        "(Feast's Ray offline store and compute engine on the cluster at ray_address)",
    )
    ray_task_retries: int = Field(
        default=3, ge=0, le=20, description="a --ray task whose worker dies is run again this many times"
    )

    def repo_data_dir(self, repo_name: str) -> Path:
        """Where the tables of one repository live by default: `<data root>/<repo name>/`."""
        if not repo_name or repo_name in (".", "..") or _PATH_SEPARATORS.search(repo_name):
            raise BadConfig(
                f"repository name {repo_name!r} is not one folder name: it would place tables outside "
                "the data root (pass another --name)"
            )
        return self.data_dir / repo_name


class ModelSettings(BaseModel):
    """Training, registry and promotion."""

    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI (default: sqlite under the data root)"
    )
    train_workers: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Ray workers that train an organisation-wide model together (LightGBM data-parallel)",
    )
    min_positive_labels: int = Field(
        default=50,
        ge=0,
        description="below this many mature positive labels: cross-project model (cold start)",
    )
    change_risk_features: Literal["change_risk_v1", "change_risk_v2"] = Field(
        default="change_risk_v1",
        description="feature service of the change-risk model: v1 = change metrics and history; v2 = v1 "
        "plus the code of the diff and the message (a model that reads the code)",
    )
    public_jit_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "data" / "jit" / "issta21",
        description="public JIT defect data (ISSTA'21 schema) for the cold-start model and the benchmark",
    )


RiskBand = Literal["medium", "high", "critical"]


def _default_risk_bands() -> dict[RiskBand, float]:
    return {"medium": 0.2, "high": 0.4, "critical": 0.7}


class ServingSettings(BaseModel):
    """The risk API."""

    api_tokens: list[ApiToken] = Field(default_factory=list, description="tokens the risk API accepts")
    risk_bands: dict[RiskBand, float] = Field(
        default_factory=_default_risk_bands,
        description="lower probability bounds of the risk bands (below medium: low)",
    )
    max_batch: int = Field(default=1000, ge=1, le=100_000, description="largest batch the risk API scores")
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=1 << 30,
        description="largest request body the risk API reads, in bytes; larger ones get 413 unread",
    )
    model_reload_seconds: float = Field(
        default=300.0, gt=0, description="how often the API reloads champions"
    )


class AgentSettings(BaseModel):
    """The agents: policy, where risk and production state come from, the LLM, the audit log."""

    policy: Path | None = Field(default=None, description="decision policy YAML (default: the packaged one)")
    repositories: dict[str, Path] = Field(
        default_factory=dict, description="git checkouts the agents service decides on, by repository name"
    )
    risk_api_url: str | None = Field(
        default=None, description="score through this risk API (http://HOST:PORT) instead of in process"
    )
    risk_api_token: SecretStr | None = Field(default=None, description="bearer token for the risk API")
    metrics_file: Path | None = Field(
        default=None,
        description="hourly service metrics, CSV or Parquet: service, timestamp, requests, errors",
    )
    prometheus_url: str | None = Field(default=None, description="Prometheus to read service metrics from")
    prometheus_requests_query: str = Field(
        default='sum(increase(http_requests_total{{service="{service}"}}[1h]))',
        description="PromQL of requests per hour of a service (`{service}` is replaced)",
    )
    prometheus_errors_query: str = Field(
        default='sum(increase(http_requests_total{{service="{service}",code=~"5.."}}[1h]))',
        description="PromQL of failed requests per hour of a service",
    )
    executor: Literal["dry-run", "kubernetes"] = Field(
        default="dry-run", description="who carries out rollouts: record only, or a Kubernetes cluster"
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig file (default: KUBECONFIG or ~/.kube/config, else the in-cluster config)",
    )
    kube_context: str | None = Field(
        default=None, description="kubeconfig context (default: the current one)"
    )
    kube_namespace: str = Field(default="default", description="namespace of the Deployments awo rolls out")
    kube_namespaces: dict[str, str] = Field(
        default_factory=dict,
        description="namespace per environment (`{staging: shop-staging}`); others: kube_namespace",
    )
    kube_poll_seconds: float = Field(
        default=2.0, gt=0, le=60, description="how often a rollout's objects are read back while waiting"
    )
    kube_timeout_seconds: float = Field(
        default=600.0, gt=0, description="how long a Deployment may take to become available"
    )
    analysis_template: Path | None = Field(
        default=None, description="canary analysis template YAML (default: the packaged one)"
    )
    audit_secret: SecretStr = Field(
        default=SecretStr("awo-insecure-default-audit-secret"),
        description="HMAC key of the decision audit log (set your own: the default is public)",
    )
    llm_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint (none: no LLM)")
    llm_model: str | None = Field(default=None, description="model name at that endpoint")
    llm_timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="one LLM call's time limit")
    llm_response_format: Literal["json_object", "json_schema"] = Field(
        default="json_object",
        description="json_object: llama.cpp's JSON with a schema; json_schema: OpenAI's structured outputs",
    )
    llm_samples: int = Field(
        default=1, ge=1, le=9, description="self-consistency: LLM samples that must agree"
    )
    config_root: Path = Field(
        default=Path("config"),
        description="per-environment configuration: <config_root>/<environment>/<service>.yaml|json|env",
    )


class HostSettings(BaseModel):
    """Git hosts: the webhook secrets (a host without one has no webhook route) and the REST APIs that the
    decision goes back to as a commit status."""

    github_webhook_secret: SecretStr | None = Field(
        default=None, description="GitHub webhook secret (X-Hub-Signature-256); none: no /webhooks/github"
    )
    gitlab_webhook_token: SecretStr | None = Field(
        default=None, description="GitLab webhook secret token (X-Gitlab-Token); none: no /webhooks/gitlab"
    )
    bitbucket_webhook_secret: SecretStr | None = Field(
        default=None, description="Bitbucket Cloud webhook secret (X-Hub-Signature); none: no route"
    )
    github_api_url: str = Field(
        default="https://api.github.com", description="GitHub REST API (Enterprise: https://HOST/api/v3)"
    )
    github_token: SecretStr | None = Field(default=None, description="GitHub token with commit status write")
    gitlab_api_url: str = Field(
        default="https://gitlab.com/api/v4", description="GitLab REST API (self-managed: https://HOST/api/v4)"
    )
    gitlab_token: SecretStr | None = Field(default=None, description="GitLab token with the api scope")
    bitbucket_api_url: str = Field(
        default="https://api.bitbucket.org", description="Bitbucket Cloud REST API"
    )
    bitbucket_token: SecretStr | None = Field(
        default=None, description="Bitbucket repository access token (repository:write)"
    )
    webhook_attempts: int = Field(
        default=3, ge=1, le=20, description="a webhook job that fails this many times is given up (recorded)"
    )
    public_url: str = Field(
        default="http://127.0.0.1:8100",
        description="where users reach the agents service: commit statuses link to the decision there",
    )


class Settings(DataSettings, ModelSettings, ServingSettings, AgentSettings, HostSettings, BaseSettings):
    """Everything configurable. Environment: `AWO_<NAME>`; file: the YAML named by `AWO_CONFIG`."""

    model_config = SettingsConfigDict(env_prefix="AWO_", extra="forbid")

    config: Path | None = Field(default=None, description="YAML file with any of these settings")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get("AWO_CONFIG")
        return (init_settings, env_settings, _SectionedYamlSource(settings_cls, Path(path) if path else None))


def load_settings(**overrides: Any) -> Settings:
    """Settings from environment and file, with explicit overrides (CLI options) on top."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadConfig(f"setting {where!r}: {first['msg']} (got {first.get('input')!r})") from exc
