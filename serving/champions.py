"""The champions the API serves, reloaded without restart: on `POST /v1/models/reload` and on a timer. If
MLflow is unreachable, the models in hand keep serving and `/readyz` says so."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from features.errors import AwoError
from features.settings import Settings
from models.registry import (
    CHALLENGER,
    CHAMPION,
    LoadedModel,
    alias_version,
    connect,
    load,
    load_version,
    redacted,
    redacted_uri,
    registry_failures,
)

log = logging.getLogger(__name__)
MODEL_NAMES = ("change-risk", "deploy-failure")


@dataclass(frozen=True)
class Served:
    """What is served, swapped in one assignment: a reader never sees new models beside old errors."""

    models: dict[str, LoadedModel]
    errors: dict[str, str]
    last_reload: float | None


@dataclass
class ReloadReport:
    loaded: dict[str, str]  # model → version now served
    changed: list[str]
    errors: dict[str, str]


def unreachable(uri: str, timeout: float = 2.0) -> str | None:
    """Why a tracking server cannot be reached, or None. Checked first with a short timeout: MLflow's own
    client retries with exponential backoff for minutes, which would stall a reload."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None  # a database URI: opening it is fast and its errors are reported by MLflow
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:  # a port out of range or not a number
        return f"{redacted_uri(uri)}: {exc}"
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{parsed.hostname}:{port}: {exc}"
    return None


class Champions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.served = Served({}, {}, None)
        self._lock = threading.Lock()  # one reload at a time; readers take `served` without waiting
        self._metas: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def models(self) -> dict[str, LoadedModel]:
        return self.served.models

    @property
    def errors(self) -> dict[str, str]:
        return self.served.errors

    def get(self, name: str) -> LoadedModel | None:
        return self.served.models.get(name)

    def reload(self) -> ReloadReport:
        changed, errors = [], {}
        with self._lock:
            models = dict(self.served.models)
            try:
                uri = connect(self.settings)
                problem = unreachable(uri)
            except registry_failures() as exc:  # a broken tracking configuration: keep serving what we have
                problem = f"{type(exc).__name__}: {redacted(str(exc))}"
            if problem:
                errors = {name: f"tracking server unavailable: {problem}" for name in MODEL_NAMES}
            for name in MODEL_NAMES if not errors else ():
                try:
                    version = alias_version(name, CHAMPION)
                    current = models.get(name)
                    if version is None:
                        errors[name] = f"no champion of {name!r} in the registry"
                    elif current is None or current.version != version:
                        models[name] = load(name, CHAMPION)
                        changed.append(name)
                except AwoError as exc:  # the registry's failures arrive as RegistryUnavailable
                    errors[name] = str(exc)
                    log.warning("model reload failed for %s: %s", name, exc)
            self.served = Served(models, errors, time.time())
        return ReloadReport({n: m.version for n, m in models.items()}, changed, errors)

    def reload_failed(self, exc: BaseException) -> None:
        """Record a reload that failed unexpectedly (a bug), so that `/readyz` shows it until a reload
        succeeds."""
        problem = f"reload failed: {type(exc).__name__}: {redacted(str(exc))}"
        with self._lock:
            self.served = Served(self.served.models, {name: problem for name in MODEL_NAMES}, time.time())

    def _meta(self, name: str, alias: str, version: str) -> dict[str, Any]:
        """A version's metadata: from the served model, else loaded once (versions never change)."""
        served = self.models.get(name)
        if served is not None and served.version == version:
            return served.meta
        if (name, version) not in self._metas:
            # By number: the alias may have moved since `version` was read.
            self._metas[(name, version)] = load_version(name, version, alias).meta
        return self._metas[(name, version)]

    def describe(self) -> dict[str, Any]:
        """Champion and challenger versions with their evaluation metrics."""
        from models.registry import tracking_uri

        out: dict[str, Any] = {}
        problem = unreachable(tracking_uri(self.settings))
        for name in MODEL_NAMES:
            served = self.models.get(name)
            entry: dict[str, Any] = {"served_version": served.version if served else None}
            if problem:
                entry["registry_error"] = f"tracking server unavailable: {problem}"
                out[name] = entry
                continue
            try:
                for alias in (CHAMPION, CHALLENGER):
                    version = alias_version(name, alias)
                    entry[alias] = None
                    if version is not None:
                        meta = self._meta(name, alias, version)
                        entry[alias] = {
                            "version": version,
                            "model_kind": meta.get("model_kind"),
                            "feature_service": meta.get("feature_service"),
                            "test_metrics": meta.get("test_metrics"),
                            "test_from": meta.get("test_from"),
                            # the score quantiles the agents' gate reads bands against
                            "risk_reference": meta.get("risk_reference"),
                        }
            except AwoError as exc:  # the registry is away: describe what is served
                entry["registry_error"] = str(exc)
            out[name] = entry
        return out
