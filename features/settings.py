"""One typed settings object for the whole system, read from `AWO_*` environment variables and an
optional YAML file (`AWO_CONFIG`); passed down explicitly, never read at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from features.errors import BadConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class _YamlFileSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by `AWO_CONFIG` (lower precedence than the environment)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path is None:
            return
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise BadConfig(f"config file {path} (AWO_CONFIG) does not exist") from exc
        except yaml.YAMLError as exc:
            raise BadConfig(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise BadConfig(f"config file {path} must hold a mapping of setting names to values")
        self._values = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class ApiToken(BaseModel):
    """An API token as stored in configuration: its SHA-256 digest, never the token itself."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["risk:read", "models:reload"]] = Field(min_length=1)


class Settings(BaseSettings):
    """Everything configurable. Environment: `AWO_<NAME>`; file: the YAML named by `AWO_CONFIG`."""

    model_config = SettingsConfigDict(env_prefix="AWO_", extra="forbid")

    config: Path | None = Field(default=None, description="YAML file with any of these settings")
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
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI (default: sqlite under the data root)"
    )
    min_positive_labels: int = Field(
        default=50,
        ge=0,
        description="below this many mature positive labels: cross-project model (cold start)",
    )
    api_tokens: list[ApiToken] = Field(default_factory=list, description="tokens the risk API accepts")
    risk_bands: dict[Literal["medium", "high", "critical"], float] = Field(
        default_factory=lambda: {"medium": 0.2, "high": 0.4, "critical": 0.7},
        description="lower probability bounds of the risk bands (below medium: low)",
    )
    max_batch: int = Field(default=1000, ge=1, le=100_000, description="largest batch the risk API scores")
    model_reload_seconds: float = Field(
        default=300.0, gt=0, description="how often the API reloads champions"
    )
    checkpoint_seconds: float = Field(
        default=30.0, gt=0, description="a long mining run saves what it has at this interval"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        import os

        path = os.environ.get("AWO_CONFIG")
        return (init_settings, env_settings, _YamlFileSource(settings_cls, Path(path) if path else None))

    def repo_data_dir(self, repo_name: str) -> Path:
        """Where the tables of one repository live by default: `<data root>/<repo name>/`."""
        return self.data_dir / repo_name


def load_settings(**overrides: Any) -> Settings:
    """Settings from environment and file, with explicit overrides (CLI options) on top."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadConfig(f"setting {where!r}: {first['msg']} (got {first.get('input')!r})") from exc
