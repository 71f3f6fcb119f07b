"""The Feast feature store on a built demo history: no leakage, online equals offline, clear answers to
bad input, and the Redis online store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

import features.store as features_store
from features.change_metrics import KAMEI_METRICS
from features.history import commit_tables
from features.settings import load_settings
from features.store import (
    FeatureNotFound,
    apply,
    materialize,
    online_features,
    open_store,
    resolve_features,
    training_set,
)
from pipelines.features_job import build_features
from pipelines.flow import prepare
from pipelines.mine import mine_repository
from tests.conftest import free_port


@pytest.fixture(scope="module")
def built(small_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    settings = load_settings(data_dir=root)
    tables = root / "demo"
    store = prepare(small_world.repo, settings, tables, name="demo", delivery=small_world.repo.parent)
    commits = pd.read_parquet(tables / "commits.parquet")
    files = pd.read_parquet(tables / "files.parquet")
    return settings, store, commits, files


def _entities(commits: pd.DataFrame) -> pd.DataFrame:
    return commits[["repo", "sha", "committed_at"]].rename(columns={"committed_at": "event_timestamp"})


def test_every_training_feature_is_recomputed_from_strictly_earlier_data(built):
    _, store, commits, files = built
    sample = commits.sample(120, random_state=3)
    got = training_set(store, _entities(sample), "change_risk_v1").set_index("sha")
    fix_time = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    known_at = {  # when each defect became known: its first fix
        row.sha: min(fix_time[f] for f in row.fixed_by)
        for row in commits.itertuples()
        if row.bug_inducing is True and len(row.fixed_by)
    }
    rows = files.merge(commits[["sha", "committed_at", "author_id", "is_bot"]], on="sha")
    assert (files["change_type"] != "RENAME").all()  # the naive recomputation follows paths only
    for c in sample.itertuples():
        t = c.committed_at
        earlier = commits[commits["committed_at"] < t]
        mine = earlier[(earlier["author_id"] == c.author_id) & ~earlier["is_bot"]]
        expected = {
            "author_commits_30d": (mine["committed_at"] >= t - timedelta(days=30)).sum(),
            "author_commits_90d": (mine["committed_at"] >= t - timedelta(days=90)).sum(),
            "author_known_defects": sum(known_at.get(s, t) < t for s in mine["sha"]),
        }
        if not c.is_bot:
            own = sum(known_at.get(s, t) < t for s in mine["sha"])
            expected["author_defect_rate"] = own / len(mine) if len(mine) else 0.0
        before = rows[rows["committed_at"] < t]
        paths = files.loc[files["sha"] == c.sha, "path"]
        per_file = [before[before["path"] == p] for p in paths]
        if len(per_file):
            expected["file_changes_max"] = max(len(f) for f in per_file)
            expected["file_defects_max"] = max(
                sum(known_at.get(s, t) < t for s in f["sha"]) for f in per_file
            )
            expected["file_authors_max"] = max(f.loc[~f["is_bot"], "author_id"].nunique() for f in per_file)
        for feature, value in expected.items():
            assert got.loc[c.sha, feature] == pytest.approx(value), (c.sha, feature)


def test_a_defect_found_after_the_timestamp_does_not_change_the_history_before_it():
    t = pd.Timestamp("2024-01-01", tz="UTC")
    day = pd.Timedelta(days=1)
    commits = pd.DataFrame(
        {
            "repo": "r", "sha": ["bug", "mid", "fix", "late"], "seq": [0, 1, 2, 3],
            "committed_at": [t, t + 5 * day, t + 10 * day, t + 15 * day],
            "author_id": ["ann", "ann", "bob", "ann"], "is_bot": False,
            "change_kind": "feature", "bug_inducing": [True, False, False, False],
            "fixed_by": [["fix"], [], [], []],
            **dict.fromkeys(KAMEI_METRICS, 0.0), "la": 1, "ld": 0,
        }
    )  # fmt: skip
    files = pd.DataFrame(
        {
            "sha": ["bug", "mid", "fix", "late"], "path": "a.py", "old_path": None, "change_type": "MODIFY",
            "la": 1, "ld": 0, "subsystem": "(root)", "is_test": False, "is_docs": False, "is_config": False,
            "is_migration": False, "is_ui_text": False,
        }
    )  # fmt: skip
    history = commit_tables(commits, files)["commit_history"].set_index("sha")
    assert history.loc["mid", "author_known_defects"] == 0 and history.loc["mid", "file_defects_max"] == 0
    assert history.loc["late", "author_known_defects"] == 1 and history.loc["late", "file_defects_max"] == 1
    assert history.loc["late", "author_defect_rate"] == pytest.approx(1 / 2)
    assert history.loc["late", "file_days_since_defect_min"] == pytest.approx(5.0)


def test_online_features_equal_the_latest_offline_row(built):
    settings, store, commits, _ = built
    latest = commits.sort_values("seq").tail(40)
    offline = training_set(store, _entities(latest), "change_risk_v1").set_index("sha")
    entity_rows = [{"repo": r, "sha": s} for r, s in zip(latest["repo"], latest["sha"], strict=True)]
    online = online_features(store, "change_risk_v1", entity_rows)
    assert not online.warnings
    for sha, row in zip(latest["sha"], online.rows, strict=True):
        for name, value in row.items():
            expected = offline.loc[sha, name]
            assert (value is None and pd.isna(expected)) or value == pytest.approx(expected), (sha, name)
    per_feature = store.get_online_features(features=store.get_feature_service("change_risk_v1"),
                                            entity_rows=entity_rows).to_dict()  # fmt: skip
    for i, row in enumerate(online.rows):  # the packed vector equals the per-feature views
        for name, value in row.items():
            other = per_feature[name][i]
            assert (value is None and (other is None or np.isnan(other))) or value == pytest.approx(other)
    # The latest state of each author and service online equals the newest offline row of their history.
    authors = pd.read_parquet(settings.data_dir / "feast" / "sources" / "author_history.parquet")
    newest = authors.sort_values("event_at").groupby("author_id").tail(1).set_index("author_id")
    got = store.get_online_features(
        features=[f"author_history:{n}" for n in ("author_exp", "author_defect_rate_now")],
        entity_rows=[{"author_id": a} for a in newest.index],
    ).to_dict()
    assert np.allclose(got["author_exp"], newest["author_exp"])
    assert np.allclose(got["author_defect_rate_now"], newest["author_defect_rate_now"])


def test_packed_vector_follows_the_feature_service_order(built):
    from features.history import CHANGE_RISK_V1

    _, store, _, _ = built
    service = store.get_feature_service("change_risk_v1")
    assert [f.name for p in service.feature_view_projections for f in p.features] == list(CHANGE_RISK_V1)


def test_unknown_features_missing_entities_and_a_stale_store_are_reported(built, tmp_path):
    settings, store, commits, _ = built
    with pytest.raises(FeatureNotFound, match="no_such_feature"):
        resolve_features(store, ["commit_change:la", "no_such_feature"])
    with pytest.raises(FeatureNotFound, match="'change_risk_v9'"):
        online_features(store, "change_risk_v9", [{"repo": "demo", "sha": "x"}])
    result = online_features(store, "change_risk_v1", [{"repo": "demo", "sha": "0" * 40}], settings)
    assert all(v is None for v in result.rows[0].values())  # explicit nulls, never zeros
    assert any("no features" in w for w in result.warnings)
    # A store materialized before the newest data says so.
    stale_settings = load_settings(data_dir=tmp_path)
    shutil.copytree(settings.data_dir / "feast" / "sources", tmp_path / "feast" / "sources")
    stale = open_store(stale_settings)
    apply(stale)
    materialize(stale, commits["committed_at"].min().to_pydatetime() + timedelta(days=30))
    warned = online_features(stale, "change_risk_v1", [{"repo": "demo", "sha": commits["sha"].iloc[-1]}],
                             stale_settings)  # fmt: skip
    assert any("stale" in w and "commit_change" in w for w in warned.warnings)


def test_a_repository_built_later_with_older_history_reaches_the_online_store(built, tiny_repo, tmp_path):
    settings, store, _, _ = built
    tiny_repo.lines("svc/a.py", 5)
    old = tiny_repo.commit("Add a", at=1_400_000_000)  # 2014: older than anything materialized
    tables = tmp_path / "tiny"
    mine_repository(tiny_repo.path, settings, tables, name="tiny")
    build_features(settings, tables)
    materialize(store)
    found = online_features(store, "change_risk_v1", [{"repo": "tiny", "sha": old}])
    assert found.rows[0]["la"] == 5 and not found.warnings


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian package redis-server; `make test` installs it as root)"
        )
    port = free_port()
    pidfile = tmp_path / "redis.pid"
    options = [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "yes",
    ]
    subprocess.run([binary, *options, "--pidfile", str(pidfile), "--dir", str(tmp_path)], check=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    for _ in range(50):
        if pidfile.exists():
            subprocess.run(["kill", pidfile.read_text().strip()], check=False)
            break
        time.sleep(0.05)


def test_redis_online_store_serves_the_same_features(built, redis_url, tmp_path):
    settings, store, commits, _ = built
    redis_settings = load_settings(data_dir=tmp_path, online_store=redis_url)
    shutil.copytree(settings.data_dir / "feast" / "sources", tmp_path / "feast" / "sources")
    redis_store = open_store(redis_settings)
    assert redis_store.config.online_store.type == "redis"
    apply(redis_store)
    materialize(redis_store)
    rows = [{"repo": "demo", "sha": s} for s in commits["sha"].tail(10)]
    from_redis = online_features(redis_store, "change_risk_v1", rows).rows
    from_sqlite = online_features(store, "change_risk_v1", rows).rows
    assert from_redis == from_sqlite


def test_features_commands_print_what_they_did(small_world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path))
    settings = load_settings()
    tables = tmp_path / "demo"
    mine_repository(small_world.repo, settings, tables, name="demo")
    runner = CliRunner()
    applied = runner.invoke(app, ["features", "apply"])
    assert applied.exit_code == 0 and "8 feature views, 3 feature services" in applied.output
    built = runner.invoke(app, ["features", "build", "--data", str(tables)])
    assert built.exit_code == 0 and "commit_change 600" in built.output and "no labels yet" in built.output
    assert runner.invoke(app, ["features", "materialize", "--end", "not-a-time"]).exit_code == 2
    done = runner.invoke(app, ["features", "materialize"])
    assert done.exit_code == 0 and "materialized 6 feature views" in done.output
    assert "skipped (no data yet): deployment_change, service_health" in done.output
    commits = pd.read_parquet(tables / "commits.parquet").head(25)
    _entities(commits).to_csv(tmp_path / "entities.csv", index=False)
    result = runner.invoke(app, ["features", "training-set", "--entities", str(tmp_path / "entities.csv"),
                                 "--out", str(tmp_path / "train.parquet")])  # fmt: skip
    assert result.exit_code == 0 and "25 rows x 44 features of change_risk_v1" in result.output
    assert len(pd.read_parquet(tmp_path / "train.parquet")) == 25


def test_the_direct_online_read_answers_as_feasts_get_online_features(built):
    """online_features reads through the online store's own `online_read` (keys serialized once); for v1
    and v2, known and unknown commits, it answers exactly what Feast's general path answers."""
    from features.store import _packed_plan

    _, store, commits, _ = built
    rows = [{"repo": "demo", "sha": s} for s in commits["sha"].tail(30)]
    rows += [{"repo": "demo", "sha": "0" * 40}, {"repo": "elsewhere", "sha": commits["sha"].iloc[-1]}]
    for service in ("change_risk_v1", "change_risk_v2"):
        references, _ = _packed_plan(store, service)
        direct = features_store._read_online(store, references, rows)
        general = store.get_online_features(features=references, entity_rows=rows).to_dict()
        for name in direct:  # a missing value inside a vector may be NaN or None: both mean "unknown"
            assert [_unknown_as_none(v) for v in direct[name]] == [_unknown_as_none(v) for v in general[name]]
        assert direct[references[0].split(":")[1]][-2:] == [None, None]  # unknown commits: nothing


def _unknown_as_none(value):
    if isinstance(value, list | tuple | np.ndarray):
        return [_unknown_as_none(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value
