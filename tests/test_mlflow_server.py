"""MLflow on a tracking server with a PostgreSQL backend store (scripts/mlflow-server.sh): `awo train` and
`awo promote` configured only by AWO_MLFLOW_TRACKING_URI register, alias and serve models through it, the
rows are in PostgreSQL, the artifacts in the server's folder, and both survive a restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from features.settings import Settings, load_settings
from tests.postgres_server import SCRIPT, MlflowServer, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

NAME = "change-risk"
AWO = [sys.executable, "-m", "pipelines"]


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    # not pytest's tmp_path: /tmp/pytest-of-root is private, and PostgreSQL runs as the postgres user
    folder = Path(tempfile.mkdtemp(prefix="awo-mlflow-server-"))
    folder.chmod(0o755)
    mlflow_server = MlflowServer(folder / "server")
    try:
        mlflow_server.start()
        yield mlflow_server
    finally:
        mlflow_server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(server: MlflowServer, small_world, tmp_path_factory) -> tuple[Settings, Path, dict[str, str]]:
    """A demo world prepared locally, then a champion, a challenger and the gate through the server, each
    by the `awo` CLI with nothing but AWO_MLFLOW_TRACKING_URI pointing there."""
    from pipelines.flow import prepare

    root = tmp_path_factory.mktemp("mlflow-server-data")
    settings = load_settings(data_dir=root, min_positive_labels=10)
    tables = root / "demo"
    prepare(small_world.repo, settings, tables, name="demo", delivery=small_world.repo.parent)
    config = root / "model.yaml"
    config.write_text("n_estimators: 200\nlearning_rate: 0.05\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"AWO_DATA_DIR": str(root), "AWO_MIN_POSITIVE_LABELS": "10",
            "AWO_MLFLOW_TRACKING_URI": server.tracking_uri}  # fmt: skip
    outputs = {}
    for step, args in [("champion", ["train", NAME, "--data", str(tables), "--config", str(config)]),
                       ("challenger", ["train", NAME, "--data", str(tables), "--config", str(config)]),
                       ("promote", ["promote", NAME, "--data", str(tables)])]:  # fmt: skip
        done = subprocess.run([*AWO, *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"awo {' '.join(args)}: {done.stderr[-2000:]}"
        outputs[step] = done.stdout
    return settings.model_copy(update={"mlflow_tracking_uri": server.tracking_uri}), tables, outputs


@pytest.fixture
def no_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """models.registry.connect writes MLFLOW_TRACKING_URI; the test's value goes when the test ends."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def registry_rows(server: MlflowServer) -> tuple[list[tuple], list[tuple]]:
    """(version, status) of every version and (alias, version) of every alias of the model, read from
    PostgreSQL itself."""
    with server.postgres() as db, db.cursor() as cursor:
        cursor.execute("SELECT version, status FROM model_versions WHERE name = %s ORDER BY version", (NAME,))
        versions = cursor.fetchall()
        cursor.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s ORDER BY alias", (NAME,)
        )
        aliases = cursor.fetchall()
    return versions, aliases


def test_start_prints_an_evalable_tracking_uri_and_the_server_answers(server):
    import urllib.request

    assert server.script("start").stdout.strip() == f"AWO_MLFLOW_TRACKING_URI={server.tracking_uri}"
    assert urllib.request.urlopen(f"{server.tracking_uri}/health", timeout=10).status == 200
    status = server.script("status")
    assert status.returncode == 0 and f"port {server.port}" in status.stdout


def test_train_and_promote_through_the_server_land_in_postgres(server, trained, no_mlflow_env):
    from models.registry import connect, load

    settings, _, outputs = trained
    versions, aliases = registry_rows(server)
    assert versions == [(1, "READY"), (2, "READY")]
    # the second version is as good as the first (same data and seed), so the gate promoted it
    assert aliases == [("challenger", 2), ("champion", 2)]
    assert "version 2" in outputs["challenger"]
    connect(settings)
    champion = load(NAME)  # as the risk API loads it: by alias, artifacts downloaded from the server
    assert champion.version == "2" and champion.feature_service == "change_risk_v1"
    assert champion.model.features == champion.meta["features"] and champion.meta["threshold"] is not None


def test_artifacts_of_a_server_default_experiment_are_files_in_the_servers_folder(server):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.tracking_uri)
    experiment_id = client.create_experiment("artifact-check")  # the server picks the location
    run_id = client.create_run(experiment_id).info.run_id
    client.log_text(run_id, "served", "note.txt")
    client.set_terminated(run_id)
    stored = list(server.artifacts.rglob("note.txt"))
    assert [path.read_text() for path in stored] == ["served"] and run_id in str(stored[0])


def test_model_artifacts_are_files_in_the_servers_artifact_folder(server, trained):
    settings, _, _ = trained
    served = sorted(path.name for path in server.artifacts.rglob("risk_model.joblib"))
    local = sorted(str(path) for path in settings.data_dir.rglob("risk_model.joblib"))
    assert served == ["risk_model.joblib", "risk_model.joblib"], "each version's model in the artifact folder"
    assert local == [], "nothing of a model written under the data root"


def test_registry_and_aliases_survive_a_restart_on_other_ports(server, trained, no_mlflow_env):
    from models.registry import alias_version, connect, load

    settings, _, _ = trained
    before = registry_rows(server)
    server.stop()
    assert server.script("status").returncode == 3
    server.start()
    assert registry_rows(server) == before
    connect(settings.model_copy(update={"mlflow_tracking_uri": server.tracking_uri}))
    assert alias_version(NAME, "champion") == "2"
    assert load(NAME).version == "2"


def test_a_taken_port_or_missing_postgres_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(SCRIPT), "start", "--dir", str(tmp_path / "s"), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip() == f"mlflow-server.sh: port {port} (--port) is taken on 127.0.0.1"
    env = {**os.environ, "AWO_PG_BIN": str(tmp_path / "no-postgres")}
    done = subprocess.run([str(SCRIPT), "start", "--dir", str(tmp_path / "s")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    assert "no pg_ctl in AWO_PG_BIN" in done.stderr
