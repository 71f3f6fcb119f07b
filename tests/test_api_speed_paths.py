"""The risk API's fast path (serving.compiled) against RiskModel's own answers, on a model trained on a demo
world: the compiled forest and LightGBM's single-row predictor answer as LightGBM does, and a model that
cannot be compiled is served by LightGBM with the reason given."""

from __future__ import annotations

import numpy as np
import pytest

from features.settings import ApiToken, load_settings
from models.risk_model import ModelConfig
from serving.auth import new_token

FAST = ModelConfig(n_estimators=200, learning_rate=0.05)
READER, READER_DIGEST = new_token()


@pytest.fixture(scope="module")
def trained(small_world, tmp_path_factory):
    import pandas as pd

    from features.store import online_features
    from models.registry import load
    from pipelines.flow import prepare
    from pipelines.train import train

    root = tmp_path_factory.mktemp("speed")
    tokens = [ApiToken(name="ci", sha256=READER_DIGEST, scopes=["risk:read"])]
    settings = load_settings(data_dir=root, min_positive_labels=10, api_tokens=tokens)
    store = prepare(small_world.repo, settings, root / "demo", name="demo", delivery=small_world.repo.parent)
    train("change-risk", settings, root / "demo", FAST)
    train("deploy-failure", settings, root / "demo", FAST)
    loaded = load("change-risk")
    shas = list(pd.read_parquet(root / "demo" / "commits.parquet")["sha"])
    found = online_features(store, loaded.feature_service, [{"repo": "demo", "sha": s} for s in shas])
    names = loaded.model.features
    base = np.array([[np.nan if r[n] is None else r[n] for n in names] for r in found.rows], dtype=float)
    base[::5, 0] = np.nan  # missing values take LightGBM's default branches
    return loaded, base, root, settings, shas


def _assert_same(expected, got) -> None:
    assert np.array_equal(expected.design, got.design, equal_nan=True)
    np.testing.assert_allclose(got.raw, expected.raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.contributions, expected.contributions, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.probability, expected.probability, rtol=0, atol=1e-9)


def test_compiled_forest_answers_as_lightgbm_for_a_batch_and_single_rows(trained):
    from serving.compiled import PlainScorer, fast_scorer

    loaded, base, root, *_ = trained
    fast = fast_scorer(loaded.model, root / "compiled", f"{loaded.name}-{loaded.version}")
    plain = PlainScorer(loaded.model)
    assert fast.compiled is not None and fast.reason is None
    _assert_same(plain.score(base), fast.score(base))
    for i in range(0, len(base), 37):
        _assert_same(plain.score(base[i : i + 1]), fast.score(base[i : i + 1]))


def test_uncompilable_model_is_served_by_lightgbm_with_the_reason_logged(trained, caplog):
    from serving.compiled import PlainScorer, fast_scorer

    loaded, base, root, *_ = trained
    blocked = root / "not-a-directory"
    blocked.write_text("a file where the cache directory should be")
    fast = fast_scorer(loaded.model, blocked / "cache", "change-risk-1")
    assert fast.compiled is None and fast.reason is not None and str(blocked) in fast.reason
    assert any("serving with LightGBM" in r.getMessage() for r in caplog.records)
    _assert_same(PlainScorer(loaded.model).score(base), fast.score(base))
    _assert_same(PlainScorer(loaded.model).score(base[:1]), fast.score(base[:1]))


def test_api_answers_the_same_with_and_without_the_compiled_fast_path(trained):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.compiled import FastScorer, PlainScorer

    loaded, base, _, settings, shas = trained
    metrics = dict(zip(loaded.model.features, base[3].tolist(), strict=True))
    metrics.pop(loaded.model.features[1])  # a missing feature: scored as unknown
    bodies = [
        {"commits": [{"repo": "demo", "sha": shas[7]}]},
        {"commits": [{"repo": "demo", "sha": s} for s in shas[:40]] + [{"repo": "demo", "sha": "0" * 40}]},
        {
            "commits": [{"repo": "demo", "metrics": {k: v for k, v in metrics.items() if v == v}}],
            "drivers": 8,
        },
    ]
    answers = {}
    for fast in (True, False):
        with TestClient(create_app(settings, fast_scoring=fast)) as http:
            scorer = http.app.state.awo.scorer(loaded)
            assert isinstance(scorer, FastScorer if fast else PlainScorer)
            headers = {"Authorization": f"Bearer {READER}"}
            answers[fast] = [http.post("/v1/risk/commits", json=b, headers=headers).json() for b in bodies]
            deployment = {
                "repo": "demo",
                "service": "payments",
                "environment": "production",
                "commits": shas[:3],
                "started_at": "2030-01-01T00:00:00Z",
            }
            answers[fast].append(http.post("/v1/risk/deployments", json=deployment, headers=headers).json())
    assert answers[True] == answers[False]
    scored = answers[True][1]["results"]
    assert len(scored) == 41 and scored[-1]["error"]["code"] == "unknown_commit"
    assert (
        all(len(r["drivers"]) == 5 for r in scored[:40])
        and len(answers[True][2]["results"][0]["drivers"]) == 8
    )
    assert "probability" in answers[True][3]


def test_the_api_compiles_each_served_model_once_at_load_under_the_data_root(trained):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.compiled import COMPILED_DIR, FastScorer

    loaded, _, _, settings, _ = trained
    with TestClient(create_app(settings)) as http:
        state = http.app.state.awo
        scorer = state.scorer(loaded)
        assert isinstance(scorer, FastScorer) and scorer.compiled is not None
        assert state.scorer(loaded) is scorer  # built at load, not per request
        binaries = sorted(p.name for p in (settings.data_dir / COMPILED_DIR).glob("*.bin"))
        assert [b.split("-")[0:2] for b in binaries] == [["change", "risk"], ["deploy", "failure"]]
