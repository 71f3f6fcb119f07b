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


def test_online_read_serializes_commit_keys_as_feast_does():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.store import _string_keys_v3

    keys = [("demo", "3f1c9e0a" * 5), ("", "0" * 40), ("dépôt @team", "abc"), ("r" * 300, "s")]
    feast_keys = [
        serialize_entity_key(
            EntityKey(join_keys=["repo", "sha"], entity_values=[Value(string_val=r), Value(string_val=s)]),
            entity_key_serialization_version=3,
        )
        for r, s in keys
    ]
    assert _string_keys_v3(keys) == feast_keys


def test_packed_vectors_decode_as_feasts_parse_and_other_values_are_left_to_it():
    from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, StringList, Value

    from features.store import _double_list, _python_value

    for values in (
        [],
        [1.5],
        [0.0, float("nan"), -2.25, 1e300],
        [float(i) / 7 for i in range(44)],
        [3.0] * 400,
    ):
        blob = Value(double_list_val=DoubleList(val=values)).SerializeToString()
        decoded = _double_list(blob)
        assert decoded is not None
        assert np.array_equal(np.array(decoded), np.array(values), equal_nan=True)
        assert np.array_equal(
            np.array(decoded), np.array(_python_value(Value.FromString(blob))), equal_nan=True
        )
    others = [
        Value(double_val=2.5),
        Value(float_list_val=FloatList(val=[1.0, 2.0])),
        Value(string_list_val=StringList(val=["+ x = 1", "return"])),
        Value(),
    ]
    for value in others:
        assert _double_list(value.SerializeToString()) is None
    assert [_python_value(v) for v in others] == [2.5, [1.0, 2.0], ["+ x = 1", "return"], None]


def test_commit_risk_body_is_byte_for_byte_what_the_response_models_write(trained):
    """The route writes plain dicts with pydantic-core's JSON writer instead of building CommitRisk models:
    the bytes must equal the response models' own serialization of the same scores, for scored commits,
    an unknown commit, a metrics query with warnings and a code model's line drivers."""
    import dataclasses

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.core import CommitNotFound, CommitRef, LineDriver, score_commits
    from serving.schemas import CommitRisk, CommitRiskResponse, ItemError, ModelRef
    from serving.schemas import Driver as DriverModel
    from serving.schemas import LineDriver as LineModel
    from serving.scoring import _commit_item, commit_risk_json

    def reference(result) -> CommitRisk:  # the response models, validated, as the route built them before
        if isinstance(result, CommitNotFound):
            error = ItemError(code=result.code, status=result.status, message=result.message)
            return CommitRisk(repo=result.repo, sha=result.sha, error=error)
        return CommitRisk(
            repo=result.repo,
            sha=result.sha,
            probability=result.probability,
            band=result.band,
            model=ModelRef(name=result.model.name, version=result.model.version, kind=result.model.kind),
            raw_score=result.raw_score,
            base_value=result.base_value,
            drivers=[
                DriverModel(feature=d.feature, value=d.value, contribution=d.contribution)
                for d in result.drivers
            ],
            lines=[LineModel(where=d.where, line=d.line, score=d.score) for d in result.lines],
            warnings=result.warnings,
        )

    loaded, base, _, settings, shas = trained
    metrics = dict(zip(loaded.model.features, base[3].tolist(), strict=True))
    metrics = {k: v for k, v in list(metrics.items())[2:] if v == v}  # some features missing
    refs = [CommitRef(repo="demo", sha=s) for s in shas[:30]] + [CommitRef(repo="demo", sha="f" * 40)]
    refs.append(CommitRef(repo="demo", metrics=metrics))
    with TestClient(create_app(settings)) as http:
        state = http.app.state.awo
        body = {
            "commits": [
                {"repo": r.repo, "sha": r.sha} if r.sha else {"repo": r.repo, "metrics": r.metrics}
                for r in refs
            ]
        }
        answer = http.post("/v1/risk/commits", json=body, headers={"Authorization": f"Bearer {READER}"})
        results = score_commits(refs, loaded, state.store, settings, scorer=state.scorer(loaded))
    expected = CommitRiskResponse(results=[reference(r) for r in results]).model_dump_json().encode()
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.content == expected
    assert answer.json()["results"][30]["error"]["code"] == "unknown_commit"
    assert any("missing features" in w for w in answer.json()["results"][31]["warnings"])
    # a code model's line drivers (where known and not), text with quotes and non-ASCII
    lines = [LineDriver("app/x.py:12", 'raise "é" \\ error', 0.25), LineDriver(None, "x = 1e-7", -1e-7)]
    with_lines = [dataclasses.replace(results[0], lines=lines), *results[1:]]
    expected = CommitRiskResponse(results=[reference(r) for r in with_lines]).model_dump_json().encode()
    assert commit_risk_json([_commit_item(r) for r in with_lines]) == expected


def test_online_vectors_hold_what_online_features_answers_as_one_matrix(trained):
    from features.history import CHANGE_RISK_V1
    from features.store import online_features, online_vectors, open_store

    loaded, _, _, settings, shas = trained
    store = open_store(settings)
    rows = [{"repo": "demo", "sha": s} for s in shas[:60]] + [{"repo": "demo", "sha": "e" * 40}]
    rows += [{"repo": "elsewhere", "sha": shas[0]}]
    vectors = online_vectors(store, loaded.feature_service, rows)
    expected = online_features(store, loaded.feature_service, rows).rows
    assert vectors is not None and vectors.shape == (len(rows), len(CHANGE_RISK_V1))
    as_matrix = np.array([[r[n] for n in CHANGE_RISK_V1] for r in expected], dtype=float)
    assert np.array_equal(vectors, as_matrix, equal_nan=True)
    assert np.isnan(vectors[-2:]).all() and not np.isnan(vectors[:60]).all(axis=1).any()
    assert online_vectors(store, "deploy_failure_v1", rows) is None  # not a packed service
