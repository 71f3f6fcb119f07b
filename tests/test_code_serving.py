"""The code-reading change-risk model end to end on the demo world: trained on change_risk_v2, promoted
over a v1 champion by the gate on the same held-out rows, served by the API with the riskiest added lines
(each where git says it is), and scored as an unmined change from its diff."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.settings import ApiToken, load_settings
from models.risk_model import ModelConfig
from serving.auth import new_token
from tests.conftest import git

FAST = ModelConfig(n_estimators=200, learning_rate=0.05)
READER, READER_DIGEST = new_token()
OPERATOR, OPERATOR_DIGEST = new_token()


@pytest.fixture(scope="module")
def code_world(tmp_path_factory):
    """A demo world twice the size of `small_world`: the code model's time-ordered slices need labels."""
    from pipelines.demo_world import generate_world

    return generate_world(tmp_path_factory.mktemp("code-world"), seed=11, n_commits=1200)


@pytest.fixture(scope="module")
def world(code_world, tmp_path_factory):
    from pipelines.flow import prepare
    from pipelines.train import promote_model, train

    small_world = code_world
    root = tmp_path_factory.mktemp("code-serving")
    tokens = [
        ApiToken(name="ci", sha256=READER_DIGEST, scopes=["risk:read"]),
        ApiToken(name="ops", sha256=OPERATOR_DIGEST, scopes=["risk:read", "models:reload"]),
    ]
    v1 = load_settings(data_dir=root, api_tokens=tokens, min_positive_labels=10)
    tables = root / "demo"
    prepare(small_world.repo, v1, tables, name="demo", delivery=small_world.repo.parent)
    first = train("change-risk", v1, tables, FAST)
    v2 = v1.model_copy(update={"change_risk_features": "change_risk_v2"})
    second = train("change-risk", v2, tables, FAST)
    promotion = promote_model("change-risk", v2, tables)
    return v2, tables, first, second, promotion


@pytest.fixture(scope="module")
def client(world):
    from serving.app import create_app

    with TestClient(create_app(world[0])) as http:
        yield http


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {READER}"}


def test_v2_model_reads_the_code_and_the_gate_compares_it_with_the_v1_champion(world):
    from models.registry import load_version

    _, _, first, second, promotion = world
    assert first.model_kind.startswith("within") and second.model_kind.startswith("within"), second.notes
    assert load_version("change-risk", first.version, "x").feature_service == "change_risk_v1"
    loaded = load_version("change-risk", second.version, "x")
    assert loaded.feature_service == "change_risk_v2"
    assert "code_risk" in loaded.model.feature_columns
    assert set(getattr(loaded.model, "input_columns", ())) >= {
        "added_lines",
        "removed_lines",
        "message",
        "la",
    }
    # both scored on the same v2 rows (v1's columns are a subset): a real comparison, either way
    metrics = promotion["metrics"]
    assert promotion["champion"] == first.version and promotion["challenger"] == second.version
    assert promotion["test_rows"] > 50 and 0.5 < metrics["challenger"]["auc"] <= 1
    assert promotion["promoted"] == (
        metrics["challenger"]["auc"] >= metrics["champion"]["auc"]
        and metrics["challenger"]["brier"] <= metrics["champion"]["brier"] + 0.01
    )


def test_api_serves_the_v2_model_with_the_lines_that_drive_it(world, client, code_world):
    from features.store import online_features, open_store
    from models.registry import load_version

    settings, tables, _, second, _ = world
    commits = pd.read_parquet(tables / "commits.parquet")
    shas = list(commits.loc[commits["la"] > 3, "sha"].tail(15))
    # the API serves the champion; make the code model the one served whatever the gate said
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias("change-risk", "champion", second.version)
    reload = client.post("/v1/models/reload", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert reload.status_code == 200, reload.text
    response = client.post(
        "/v1/risk/commits",
        json={"commits": [{"repo": "demo", "sha": s} for s in shas], "drivers": 3},
        headers=_auth(),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    loaded = load_version("change-risk", second.version, "x")
    rows = online_features(open_store(settings), "change_risk_v2", [{"repo": "demo", "sha": s} for s in shas])
    frame = pd.DataFrame(rows.rows)
    assert np.allclose([r["probability"] for r in results], loaded.model.predict_proba(frame))
    assert all(r["model"]["version"] == second.version for r in results)
    with_lines = [r for r in results if r["lines"]]
    assert len(with_lines) >= len(results) // 2
    for r in with_lines:
        scores = [line["score"] for line in r["lines"]]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0 and len(scores) <= 3
        for line in r["lines"]:  # each line is in the commit's new file where the API says it is
            path, number = line["where"].rsplit(":", 1)
            text = git(code_world.repo, "show", f"{r['sha']}:{path}").split("\n")
            assert text[int(number) - 1][:300] == line["line"]


def test_metrics_only_query_to_a_code_model_is_scored_and_says_the_code_is_missing(client):
    response = client.post(
        "/v1/risk/commits",
        json={"commits": [{"repo": "demo", "metrics": {"la": 120, "ld": 4, "nf": 3}}]},
        headers=_auth(),
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert 0 <= result["probability"] <= 1 and result["lines"] == []
    assert any("reads the code" in w for w in result["warnings"])


def test_an_unmined_change_is_scored_from_its_diff_by_the_code_model(world, code_world, tmp_path):
    from models.registry import load_version
    from serving.core import score_unmined_change

    settings, tables, _, second, _ = world
    repo = tmp_path / "repo"
    git(tmp_path, "clone", "-q", str(code_world.repo), str(repo))
    git(repo, "checkout", "-q", "-b", "change")
    target = next(p for p in sorted(repo.rglob("*.py")) if ".git" not in p.parts)
    target.write_text(target.read_text() + "\n\ndef retry_payment(order):\n    return order.total * 2\n")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.org", "commit", "-qam", "retry payments")
    loaded = load_version("change-risk", second.version, "x")
    scored = score_unmined_change(repo, "main", "change", loaded, settings, tables=tables, name="demo")
    assert 0 <= scored.score.probability <= 1
    assert not any("reads the code" in w for w in scored.score.warnings)
    where = {line.where for line in scored.score.lines}
    assert where and all(w is not None and w.startswith(str(target.relative_to(repo))) for w in where)
