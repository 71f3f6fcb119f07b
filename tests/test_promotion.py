"""The promotion gate and the served champions against a real MLflow registry (SQLite in a temp dir) that
fails for a moment: a registry that does not answer never counts as "no champion", and a bug is never
reported as "registry away"."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.settings import Settings, load_settings
from models.risk_model import ModelConfig, RiskModel
from tests.conftest import free_port

NAME = "change-risk"
FEATURES = ["la", "lt", "nf"]


def commits(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A handful of commits whose risk grows with their size."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "la": rng.integers(1, 400, n),
            "lt": rng.integers(0, 3000, n),
            "nf": rng.integers(1, 12, n),
            "at": pd.date_range("2024-01-01", periods=n, freq="6h", tz="UTC"),
        }
    )
    frame["label"] = (rng.random(n) < frame["la"] / 500).astype(int)
    return frame


def register_version(settings: Settings, model_kind: str = "test") -> str:
    """Fit a small model and register it the way `awo train` does; returns the new version."""
    import mlflow

    from models.registry import experiment, log_model

    frame = commits()
    model = RiskModel(FEATURES, ModelConfig(n_estimators=30, min_child_samples=10), name=NAME)
    model.fit(frame, frame["label"], frame["at"])
    with mlflow.start_run(experiment_id=experiment(settings, NAME)):
        return log_model(model, NAME, "change_risk_v1", frame, {"model_kind": model_kind})


@pytest.fixture
def registry(tmp_path: Path) -> Settings:
    from models.registry import connect

    settings = load_settings(data_dir=tmp_path)
    connect(settings)
    return settings


@contextlib.contextmanager
def aliases_table_gone(settings: Settings) -> Iterator[None]:
    """The registry's SQLite store with its alias table briefly missing: every alias lookup then fails
    inside MLflow the way a locked or half-migrated database does (OperationalError, reported as
    TEMPORARILY_UNAVAILABLE)."""
    db = sqlite3.connect(settings.data_dir / "mlflow.db")
    try:
        db.execute("ALTER TABLE registered_model_aliases RENAME TO registered_model_aliases_away")
        db.commit()
        yield
    finally:
        db.execute("ALTER TABLE registered_model_aliases_away RENAME TO registered_model_aliases")
        db.commit()
        db.close()


@pytest.fixture
def fail_next_lookup(registry: Settings, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Arms the real MLflow client so that its next alias lookup, and only that one, meets a store that
    is briefly broken."""
    from mlflow import MlflowClient

    real = MlflowClient.get_model_version_by_alias
    armed: list[bool] = []

    def lookup(self, name, alias):
        if armed:
            armed.clear()
            with aliases_table_gone(registry):
                return real(self, name, alias)
        return real(self, name, alias)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", lookup)
    return lambda: armed.append(True)


@pytest.fixture
def lagging_next_lookup(registry: Settings, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Arms the real MLflow client so that its next alias lookup answers as a replica that has not yet
    seen the model: the store's own "Registered Model ... not found"."""
    from mlflow import MlflowClient

    real = MlflowClient.get_model_version_by_alias
    armed: list[bool] = []

    def lookup(self, name, alias):
        if armed:
            armed.clear()
            return real(self, f"{name}-not-replicated-yet", alias)
        return real(self, name, alias)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", lookup)
    return lambda: armed.append(True)


def test_a_missing_alias_or_model_is_no_version_and_a_failing_registry_is_an_error(registry):
    from models.registry import RegistryUnavailable, alias_version

    assert alias_version("never-trained", "champion") is None
    first = register_version(registry)
    assert alias_version(NAME, "champion") == first and alias_version(NAME, "canary") is None
    with aliases_table_gone(registry), pytest.raises(RegistryUnavailable, match="TEMPORARILY_UNAVAILABLE"):
        alias_version(NAME, "champion")


def test_a_transient_registry_error_never_makes_a_new_version_champion(registry, fail_next_lookup):
    from models.registry import RegistryUnavailable, alias_version

    champion = register_version(registry)
    fail_next_lookup()  # the champion check of the next version
    with pytest.raises(RegistryUnavailable, match=r"challenger.*awo promote change-risk") as raised:
        register_version(registry)
    assert raised.value.__cause__ is not None  # chained: the registry's own error stays visible
    assert "\n" not in str(raised.value)  # one line for the CLI, without the SQL of the failed query
    assert alias_version(NAME, "champion") == champion
    assert alias_version(NAME, "challenger") == str(int(champion) + 1)


def test_promotion_fails_when_the_registry_fails_and_the_champion_stays(registry, fail_next_lookup):
    from models.registry import RegistryUnavailable, alias_version, promote

    champion = register_version(registry)
    register_version(registry)
    fail_next_lookup()
    with pytest.raises(RegistryUnavailable):
        promote(NAME, lambda loaded: {"auc": 1.0, "brier": 0.0})
    assert alias_version(NAME, "champion") == champion


def test_served_champions_survive_a_registry_failure_and_report_it(registry):
    from serving.champions import Champions

    version = register_version(registry)
    champions = Champions(registry)
    assert champions.reload().loaded == {NAME: version}
    with aliases_table_gone(registry):
        report = champions.reload()
        described = champions.describe()
    assert report.loaded == {NAME: version}  # the model in hand keeps serving
    assert "TEMPORARILY_UNAVAILABLE" in report.errors[NAME]
    assert "TEMPORARILY_UNAVAILABLE" in described[NAME]["registry_error"]


def test_a_bug_while_reloading_or_describing_champions_is_not_reported_as_registry_away(
    registry, monkeypatch
):
    import serving.champions
    from serving.champions import Champions

    register_version(registry)
    champions = Champions(registry)

    def broken_load(name, *args):
        raise KeyError("feature_service")  # a bug, not an unreachable registry

    monkeypatch.setattr(serving.champions, "load", broken_load)
    monkeypatch.setattr(serving.champions, "load_version", broken_load)
    with pytest.raises(KeyError, match="feature_service"):
        champions.reload()
    with pytest.raises(KeyError, match="feature_service"):
        champions.describe()


def test_a_model_not_found_right_after_registering_never_makes_the_new_version_champion(
    registry, lagging_next_lookup
):
    from models.registry import RegistryUnavailable, alias_version

    champion = register_version(registry)
    lagging_next_lookup()  # the champion check of the next version meets a lagging replica
    with pytest.raises(RegistryUnavailable, match="RESOURCE_DOES_NOT_EXIST"):
        register_version(registry)
    assert alias_version(NAME, "champion") == champion
    assert alias_version(NAME, "challenger") == str(int(champion) + 1)


def test_a_loaded_model_is_the_version_it_reports_when_the_alias_moves_meanwhile(registry, monkeypatch):
    from mlflow import MlflowClient

    from models.registry import load

    first = register_version(registry, model_kind="first")
    second = register_version(registry, model_kind="second")
    real = MlflowClient.get_model_version_by_alias
    moved: list[bool] = []

    def lookup_then_promote(self, name, alias):
        found = real(self, name, alias)
        if not moved:  # a promotion lands just after the version was read
            moved.append(True)
            self.set_registered_model_alias(name, alias, second)
        return found

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", lookup_then_promote)
    loaded = load(NAME, "champion")
    assert (loaded.version, loaded.meta["model_kind"]) == (first, "first")


def test_registry_credentials_never_reach_the_errors_shown_on_readyz(tmp_path, monkeypatch):
    from models.registry import RegistryUnavailable, alias_version, connect, redacted_uri
    from serving.champions import Champions

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    assert (
        redacted_uri("postgresql://awo:secret@db:5432/mlflow?sslpassword=x")
        == "postgresql://***@db:5432/mlflow?***"
    )
    assert redacted_uri("sqlite:////srv/awo/mlflow.db") == "sqlite:////srv/awo/mlflow.db"  # path kept whole
    closed = f"http://awo:secret@127.0.0.1:{free_port()}/"
    for uri in (closed, "http://awo:secret@127.0.0.1:99999/"):  # refused, and a port out of range
        settings = load_settings(data_dir=tmp_path, mlflow_tracking_uri=uri)
        champions = Champions(settings)
        report = champions.reload()
        described = champions.describe()
        assert report.errors and champions.errors == report.errors
        assert "secret" not in repr(champions.errors) and "secret" not in repr(described)
    connect(load_settings(data_dir=tmp_path, mlflow_tracking_uri=closed))
    with pytest.raises(RegistryUnavailable) as raised:  # MLflow's own message quotes the URL it failed on
        alias_version(NAME, "champion")
    assert "127.0.0.1" in str(raised.value) and "secret" not in str(raised.value)


def test_the_reload_timer_reports_an_unexpected_error_and_reloads_on_the_next_tick(
    registry, monkeypatch, caplog
):
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    import serving.champions
    from serving.app import create_app

    first, second = register_version(registry), register_version(registry)
    real = serving.champions.alias_version
    failed, observed = threading.Event(), threading.Event()

    def alias_version(name, alias, **kwargs):
        if threading.current_thread().name == "champion-reload":
            if not failed.is_set():
                failed.set()
                raise KeyError("feature_service")  # a bug, once
            observed.wait(timeout=30)  # the next tick waits until the test has seen the report
        return real(name, alias, **kwargs)

    monkeypatch.setattr(serving.champions, "alias_version", alias_version)
    settings = registry.model_copy(update={"model_reload_seconds": 0.05})

    def readyz_until(http: TestClient, done: Callable[[dict], bool]) -> dict:
        deadline = time.monotonic() + 30
        while not done(body := http.get("/readyz").json()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return body

    with caplog.at_level(logging.ERROR, logger="serving.deps"), TestClient(create_app(settings)) as http:
        assert http.get("/readyz").json()["models"] == {NAME: first}
        body = readyz_until(http, lambda b: "KeyError" in str(b["registry_errors"]))
        assert "reload failed: KeyError" in body["registry_errors"][NAME]
        assert body["models"] == {NAME: first}  # the model in hand keeps serving
        MlflowClient().set_registered_model_alias(NAME, "champion", second)
        observed.set()
        body = readyz_until(http, lambda b: b["models"] == {NAME: second})
    assert body["models"] == {NAME: second} and "KeyError" not in str(body["registry_errors"])
    logged = [r for r in caplog.records if r.name == "serving.deps" and r.exc_info]
    assert logged and isinstance(logged[0].exc_info[1], KeyError)
