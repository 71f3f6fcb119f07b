"""The risk API through a real HTTP client, with a real MLflow store and Feast store built from a demo
world: scores, explanations, reload, authentication, bad input, and a property-based fuzz of the schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from features.settings import ApiToken, load_settings
from models.risk_model import ModelConfig
from serving.auth import new_token
from tests.conftest import free_port

FAST = ModelConfig(n_estimators=200, learning_rate=0.05)
READER, READER_DIGEST = new_token()
OPERATOR, OPERATOR_DIGEST = new_token()


@pytest.fixture(scope="module")
def world_store(small_world, tmp_path_factory):
    from pipelines.flow import prepare
    from pipelines.train import train

    root = tmp_path_factory.mktemp("api")
    tokens = [
        ApiToken(name="ci", sha256=READER_DIGEST, scopes=["risk:read"]),
        ApiToken(name="ops", sha256=OPERATOR_DIGEST, scopes=["risk:read", "models:reload"]),
    ]
    settings = load_settings(data_dir=root, api_tokens=tokens, max_batch=50, min_positive_labels=10)
    tables = root / "demo"
    prepare(small_world.repo, settings, tables, name="demo", delivery=small_world.repo.parent)
    train("change-risk", settings, tables, FAST)
    train("deploy-failure", settings, tables, FAST)
    return settings, tables


@pytest.fixture(scope="module")
def client(world_store):
    from serving.app import create_app

    settings, _ = world_store
    with TestClient(create_app(settings)) as http:
        yield http


def _auth(token: str = READER) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _commits(world_store) -> pd.DataFrame:
    return pd.read_parquet(world_store[1] / "commits.parquet")


def test_scores_equal_the_model_prediction_for_the_same_features(client, world_store):
    from features.store import online_features, open_store
    from models.registry import load

    settings, _ = world_store
    shas = list(_commits(world_store)["sha"].tail(20))
    response = client.post(
        "/v1/risk/commits", json={"commits": [{"repo": "demo", "sha": s} for s in shas]}, headers=_auth()
    )
    assert response.status_code == 200 and response.headers["x-request-id"]
    results = response.json()["results"]
    model = load("change-risk")
    rows = online_features(
        open_store(settings), "change_risk_v1", [{"repo": "demo", "sha": s} for s in shas]
    ).rows
    frame = pd.DataFrame(rows).astype(float)
    assert np.allclose([r["probability"] for r in results], model.model.predict_proba(frame))
    for r in results:
        assert r["model"]["name"] == "change-risk" and r["model"]["version"] == model.version
        assert r["band"] in {"low", "medium", "high", "critical"} and len(r["drivers"]) == 5


def test_explanations_sum_to_the_logit(client, world_store):
    sha = _commits(world_store)["sha"].iloc[-1]
    body = {"commits": [{"repo": "demo", "sha": sha}], "drivers": 500}
    result = client.post("/v1/risk/commits", json=body, headers=_auth()).json()["results"][0]
    total = result["base_value"] + sum(d["contribution"] for d in result["drivers"])
    assert total == pytest.approx(result["raw_score"], abs=1e-6)


def test_unmined_change_by_raw_metrics_with_missing_features_warned(client):
    body = {"commits": [{"repo": "demo", "metrics": {"la": 400, "ld": 50, "nf": 9, "ns": 3, "exp": 1}}]}
    result = client.post("/v1/risk/commits", json=body, headers=_auth()).json()["results"][0]
    assert 0 < result["probability"] < 1 and result["sha"] is None
    assert any("missing features" in w for w in result["warnings"])


def test_unknown_sha_is_a_per_item_404_not_a_failed_batch(client, world_store):
    known = _commits(world_store)["sha"].iloc[-1]
    body = {"commits": [{"repo": "demo", "sha": known}, {"repo": "demo", "sha": "f" * 40}]}
    response = client.post("/v1/risk/commits", json=body, headers=_auth())
    assert response.status_code == 200
    ok, missing = response.json()["results"]
    assert ok["probability"] is not None and ok["error"] is None
    assert missing["error"] == {
        "code": "unknown_commit",
        "status": 404,
        "message": f"commit {'f' * 40} of demo is not in the feature store",
    }


def test_authentication_and_scopes(client):
    body = {"commits": [{"repo": "demo", "metrics": {"la": 1}}]}
    assert client.post("/v1/risk/commits", json=body).status_code == 401
    wrong = client.post("/v1/risk/commits", json=body, headers=_auth("awo_not-a-real-token"))
    assert wrong.status_code == 401 and wrong.json()["code"] == "unauthenticated"
    forbidden = client.post("/v1/models/reload", headers=_auth(READER))
    assert forbidden.status_code == 403 and "models:reload" in forbidden.json()["message"]
    assert client.post("/v1/models/reload", headers=_auth(OPERATOR)).status_code == 200
    assert client.get("/healthz").status_code == 200  # health stays open for orchestrators


def test_bad_input_gets_4xx_with_the_field_path(client):
    too_many = {"commits": [{"repo": "demo", "metrics": {"la": i}} for i in range(51)]}
    assert client.post("/v1/risk/commits", json=too_many, headers=_auth()).status_code == 413
    malformed = client.post(
        "/v1/risk/commits", content=b'{"commits": [', headers={**_auth(), "content-type": "application/json"}
    )
    assert malformed.status_code == 422 and malformed.json()["code"] == "invalid_request"
    bad_sha = client.post(
        "/v1/risk/commits", json={"commits": [{"repo": "demo", "sha": "xyz"}]}, headers=_auth()
    )
    assert bad_sha.status_code == 422 and bad_sha.json()["errors"][0]["path"] == "body.commits.0.sha"
    both = client.post(
        "/v1/risk/commits",
        json={"commits": [{"repo": "demo", "sha": "a" * 40, "metrics": {"la": 1}}]},
        headers=_auth(),
    )
    assert both.status_code == 422 and "exactly one of sha or metrics" in both.json()["message"]


def test_deployment_risk_with_service_health(client, world_store):
    shas = list(_commits(world_store)["sha"].tail(4))
    body = {
        "repo": "demo",
        "service": "payments",
        "environment": "production",
        "strategy": "canary",
        "commits": shas,
    }
    response = client.post("/v1/risk/deployments", json=body, headers=_auth())
    assert response.status_code == 200
    result = response.json()
    assert 0 < result["probability"] < 1 and result["model"]["name"] == "deploy-failure"
    assert result["health"]["deploys_30d"] is not None and result["drivers"]


def test_models_report_versions_metrics_and_drift(client, world_store):
    from mlflow import MlflowClient

    shas = list(_commits(world_store)["sha"].tail(40))
    client.post(
        "/v1/risk/commits", json={"commits": [{"repo": "demo", "sha": s} for s in shas]}, headers=_auth()
    )
    report = client.get("/v1/models", headers=_auth()).json()
    change = report["change-risk"]
    champion = change["champion"]
    assert champion["feature_service"] == "change_risk_v1"
    # The AUC reported is the one training logged to the champion version's MLflow run, and an AUC.
    registry = MlflowClient()
    run = registry.get_run(registry.get_model_version("change-risk", champion["version"]).run_id)
    auc = champion["test_metrics"]["auc"]
    assert auc == pytest.approx(run.data.metrics["test_auc"]) and 0 < auc <= 1
    assert change["drift"]["predictions_last_24h"] >= 40 and change["drift"]["score_psi"] is not None
    metrics = client.get("/metrics").text
    assert "awo_predictions_total" in metrics and 'awo_model_version{model="change-risk"}' in metrics


def test_reload_picks_up_a_new_champion_and_survives_an_unreachable_registry(
    client, world_store, monkeypatch
):
    from mlflow import MlflowClient

    from models.registry import connect
    from pipelines.train import train

    settings, tables = world_store
    connect(settings)
    new = train("change-risk", settings, tables, FAST)
    MlflowClient().set_registered_model_alias("change-risk", "champion", new.version)
    reloaded = client.post("/v1/models/reload", headers=_auth(OPERATOR)).json()
    assert reloaded["loaded"]["change-risk"] == new.version and "change-risk" in reloaded["changed"]
    state = client.app.state.awo
    state.champions.settings = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9/"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        outage = client.post("/v1/models/reload", headers=_auth(OPERATOR)).json()
        assert outage["errors"] and outage["loaded"]["change-risk"] == new.version
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["registry_errors"]
        body = {"commits": [{"repo": "demo", "metrics": {"la": 10}}]}
        assert client.post("/v1/risk/commits", json=body, headers=_auth()).status_code == 200
    finally:
        state.champions.settings = settings
        connect(settings)


def test_fuzzed_requests_never_get_a_server_error(client):
    """Property-based fuzz of every operation in the OpenAPI schema (schemathesis strategies driven by
    Hypothesis): whatever the input, the answer is never a 5xx."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/risk/commits", "/v1/risk/deployments", "/v1/models"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def never_5xx(case) -> None:
            response = case.call(headers=_auth(OPERATOR))
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        never_5xx()


def test_metrics_count_every_worker_of_a_multi_worker_server(world_store, tmp_path):
    import os
    import re
    import subprocess
    import sys
    import time

    import httpx
    import yaml

    settings, _ = world_store
    config = tmp_path / "awo.yaml"
    config.write_text(yaml.safe_dump({"api_tokens": [t.model_dump() for t in settings.api_tokens]}))
    port = free_port()
    env = {**os.environ, "AWO_DATA_DIR": str(settings.data_dir), "AWO_CONFIG": str(config)}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        body = {"commits": [{"repo": "demo", "metrics": {"la": 10}}]}
        # Fresh connections until both workers have answered some (the kernel may favour one for a while).
        workers, sent = set(), 0
        while (len(workers) < 2 or sent < 30) and sent < 300:
            response = httpx.post(f"{base}/v1/risk/commits", json=body, headers=_auth(), timeout=10)
            assert response.status_code == 200
            workers.add(response.headers["x-awo-worker"])
            sent += 1
        assert len(workers) == 2 and server.pid not in {int(w) for w in workers}
        with httpx.Client() as http:
            totals = set()
            for _ in range(6):
                scrape = http.get(f"{base}/metrics", headers={"Connection": "close"})
                found = re.search(
                    r'awo_requests_total\{[^}]*route="/v1/risk/commits"[^}]*status="200"[^}]*\} (\S+)',
                    scrape.text,
                )
                totals.add(float(found.group(1)))
        assert totals == {float(sent)}  # every worker's requests, whichever worker answers the scrape
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_scores_are_answered_while_the_prediction_log_is_locked_and_written_at_shutdown(world_store):
    import sqlite3
    import time
    from datetime import UTC, datetime

    from serving.app import create_app

    settings, _ = world_store
    path = settings.data_dir / "predictions.db"
    shas = list(_commits(world_store)["sha"].head(30))
    # Rows of this app only: the module's client may still be writing rows of earlier tests.
    since = datetime.now(UTC).isoformat()
    with TestClient(create_app(settings)) as http:
        # Another process holds the database: the responses must not wait for it (SQLite's timeout is 30 s).
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.perf_counter()
        for sha in shas:
            response = http.post(
                "/v1/risk/commits", json={"commits": [{"repo": "demo", "sha": sha}]}, headers=_auth()
            )
            assert response.status_code == 200
        assert time.perf_counter() - started < 10
        blocker.execute("COMMIT")
        blocker.close()
    # The lifespan's end wrote every queued score: a clean shutdown loses nothing.
    with sqlite3.connect(path) as db:
        (written,) = db.execute("SELECT count(*) FROM predictions WHERE at >= ?", (since,)).fetchone()
    assert written == len(shas)
