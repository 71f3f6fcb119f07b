"""Feast on Ray (`AWO_OFFLINE_STORE=ray`): point-in-time training sets from Feast's Ray offline store on a
real Ray cluster equal the file store's row for row, and materializing through Feast's Ray compute engine
into a real Redis serves the same feature vectors as the file store with SQLite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from features.settings import load_settings
from features.store import (
    _as_file_store_gives,
    apply,
    materialize,
    online_features,
    open_store,
    ray_store_config,
    training_set,
)
from pipelines.flow import prepare
from tests.test_feature_store import redis_url  # noqa: F401  (a real redis-server on a free port)

pytest_plugins = ["tests.ray_cluster"]
pytest.importorskip("ray", reason="Ray is not installed (uv sync --extra scale)")

# Feature service -> the entity keys of its training rows. change_risk_v2 reads every view of
# change_risk_v1 plus the code of the diff (pipelines/train.py scores both models on it), so its rows cover
# v1's joins; each service costs a minute of Ray start-up and tasks on 2 cores.
SERVICES = {
    "change_risk_v2": ["repo", "sha"],
    "deploy_failure_v1": ["deploy_id"],
}
EARLY = 5  # entity rows per service timestamped before any feature row of theirs


def ray_driver(mode: str, folder: str) -> None:
    """Run in a child Python (no Ray driver state in pytest): `training` writes the training set of each
    `<service>.entities.parquet` in `folder` to `<service>.result.pkl`; `materialize` applies and
    materializes the store. Settings come from the environment (AWO_DATA_DIR, AWO_OFFLINE_STORE ...).
    Seconds per step go to `times.json`."""
    out = Path(folder)
    store = open_store(load_settings())
    times: dict[str, float] = {}
    if mode == "training":
        for service in SERVICES:
            entities = pd.read_parquet(out / f"{service}.entities.parquet")
            start = time.perf_counter()
            pd.to_pickle(training_set(store, entities, service), out / f"{service}.result.pkl")
            times[service] = time.perf_counter() - start
    else:
        apply(store)
        start = time.perf_counter()
        materialize(store)
        times["materialize"] = time.perf_counter() - start
    (out / "times.json").write_text(json.dumps(times))


def _run_driver(mode: str, folder: Path, **env: str) -> dict[str, float]:
    script = "import sys; from tests.test_feast_ray import ray_driver; ray_driver(*sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", script, mode, str(folder)],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **env},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / "times.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A generated world mined, labelled, ingested, built and materialized on the file store + SQLite."""
    from pipelines.demo_world import generate_world

    world = generate_world(tmp_path_factory.mktemp("world"), seed=5, n_commits=200)
    root = tmp_path_factory.mktemp("file-root")
    settings = load_settings(data_dir=root)
    tables = root / "demo"
    store = prepare(world.repo, settings, tables, name="demo", delivery=world.repo.parent)
    return settings, store, tables


def _entities(tables: Path) -> dict[str, pd.DataFrame]:
    """Every commit and deployment as of its own time, plus EARLY rows each asked a day before their
    feature row exists (Feast's file store drops such rows: both stores must give the same rows)."""
    commits = pd.read_parquet(tables / "commits.parquet")
    commit_rows = commits[["repo", "sha", "committed_at"]].rename(columns={"committed_at": "event_timestamp"})
    deployments = pd.read_parquet(tables / "deployments.parquet")
    deploy_rows = deployments[["deploy_id", "started_at"]].rename(columns={"started_at": "event_timestamp"})
    out = {}
    for service, rows in (
        ("change_risk_v1", commit_rows),
        ("change_risk_v2", commit_rows),
        ("deploy_failure_v1", deploy_rows),
    ):
        early = rows.sample(EARLY, random_state=1).assign(
            event_timestamp=lambda f: f["event_timestamp"] - pd.Timedelta(days=1)
        )
        out[service] = pd.concat([rows, early], ignore_index=True)
    return out


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values([*keys, "event_timestamp"], kind="stable").reset_index(drop=True)


def _compare_training_sets(built, folder: Path, **env: str) -> None:
    settings, store, tables = built
    entities = _entities(tables)
    for service, rows in entities.items():
        rows.to_parquet(folder / f"{service}.entities.parquet")
    start = time.perf_counter()
    expected = {service: training_set(store, rows, service) for service, rows in entities.items()}
    file_seconds = time.perf_counter() - start
    ray_times = _run_driver(
        "training", folder, AWO_DATA_DIR=str(settings.data_dir), AWO_OFFLINE_STORE="ray", **env
    )
    print(f"training sets: file store {file_seconds:.2f} s, Ray {ray_times}")
    for service, keys in SERVICES.items():
        want = _sorted(expected[service], keys)
        got = _sorted(pd.read_pickle(folder / f"{service}.result.pkl"), keys)
        assert len(want) == len(entities[service]) - EARLY, service  # the early rows are dropped ...
        assert list(got.columns) == list(want.columns), service
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=service)  # ... by both stores


@pytest.mark.slow
def test_training_sets_on_a_ray_cluster_equal_the_file_store_row_for_row(built, ray_cluster, tmp_path):
    _compare_training_sets(built, tmp_path, AWO_RAY_ADDRESS=ray_cluster.address)


def test_one_element_arrays_and_leaked_timestamps_are_restored_as_the_file_store_gives_them():
    ray_like = pd.DataFrame(
        {
            "sha": ["a", "b", "c"],
            "event_timestamp": pd.Timestamp("2024-01-01", tz="UTC"),
            "committed_at": pd.Timestamp("2023-12-31", tz="UTC"),
            "added_lines": ["only line", ["x", "y"], []],
            "la": [1.0, 2.0, float("nan")],
        }
    )
    names = ["added_lines", "la"]
    got = _as_file_store_gives(ray_like, ["sha", "event_timestamp"], names, ["added_lines"])
    assert list(got.columns) == ["sha", "event_timestamp", "added_lines", "la"]
    assert got["added_lines"].tolist() == [["only line"], ["x", "y"], []]
    early = pd.concat([ray_like, ray_like.head(1).assign(sha="d", added_lines=None, la=float("nan"))])
    assert _as_file_store_gives(early, ["sha", "event_timestamp"], names, ["added_lines"], ray=True)[
        "sha"
    ].tolist() == ["a", "b", "c"]  # no feature row at or before its time: the file store drops it too


def test_the_ray_store_is_configured_from_settings_and_the_definitions_stay_on_files(tmp_path):
    remote = ray_store_config("127.0.0.1:6379", tmp_path)
    assert remote["offline_store"]["ray_address"] == "127.0.0.1:6379"
    assert "ray_conf" not in remote["offline_store"]  # ray.init(address=...) refuses resource options
    assert remote["batch_engine"]["type"] == "ray.engine"
    assert ray_store_config("local", tmp_path)["batch_engine"]["ray_conf"]["num_cpus"] == 1
    local = open_store(load_settings(data_dir=tmp_path, offline_store="ray"))
    assert local.config.offline_store.type == "ray" and local.config.offline_store.ray_address is None
    assert local.config.offline_store.ray_conf["num_cpus"] == 1
    assert local.config.batch_engine.type == "ray.engine"
    assert local.config.offline_store.storage_path == str(tmp_path / "feast" / "ray_storage")
    files = open_store(load_settings(data_dir=tmp_path))
    assert files.config.offline_store.type == "file"


@pytest.mark.slow
def test_materializing_through_the_ray_engine_into_redis_serves_the_file_stores_vectors(
    built,
    redis_url,  # noqa: F811
    tmp_path,
):
    settings, store, tables = built
    ray_root = tmp_path / "ray-root"
    shutil.copytree(settings.data_dir / "feast" / "sources", ray_root / "feast" / "sources")
    started = time.perf_counter()
    file_copy = load_settings(data_dir=tmp_path / "file-copy")
    shutil.copytree(settings.data_dir / "feast" / "sources", file_copy.data_dir / "feast" / "sources")
    file_store = open_store(file_copy)
    apply(file_store)
    materialize(file_store)
    file_seconds = time.perf_counter() - started
    ray_times = _run_driver(
        "materialize",
        tmp_path,
        AWO_DATA_DIR=str(ray_root),
        AWO_OFFLINE_STORE="ray",
        AWO_ONLINE_STORE=redis_url,
    )
    print(f"materialize: file store + SQLite {file_seconds:.2f} s, Ray engine + Redis {ray_times}")
    redis_store = open_store(load_settings(data_dir=ray_root, online_store=redis_url))  # reads need no Ray
    assert redis_store.config.online_store.type == "redis"
    commits = pd.read_parquet(tables / "commits.parquet")
    code = pd.read_parquet(settings.data_dir / "feast" / "sources" / "commit_code.parquet")
    one_line = code.loc[code["added_lines"].map(len) == 1, "sha"]  # the arrays Ray's offline store unwraps
    sample = pd.concat([commits["sha"].sample(40, random_state=2), one_line.head(10)]).drop_duplicates()
    rows = [{"repo": "demo", "sha": sha} for sha in sample]
    assert len(one_line) and len(rows) > 40
    for service in ("change_risk_v1", "change_risk_v2"):
        from_redis = online_features(redis_store, service, rows)
        assert not from_redis.warnings, service
        assert from_redis.rows == online_features(store, service, rows).rows, service
    deployments = pd.read_parquet(tables / "deployments.parquet")["deploy_id"].sample(30, random_state=2)
    deploy_rows = [{"deploy_id": d} for d in deployments]
    deploy_vectors = online_features(redis_store, "deploy_failure_v1", deploy_rows).rows
    assert deploy_vectors == online_features(store, "deploy_failure_v1", deploy_rows).rows
