"""The scoring core in process, against a real Feast store and MLflow registry built from a demo world:
deployments are scored on the vector training saw, commits on the model's prediction, and a change that
is not mined yet on the miner's own metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.settings import load_settings
from models.risk_model import ModelConfig

FAST = ModelConfig(n_estimators=200, learning_rate=0.05)


@pytest.fixture(scope="module")
def world(small_world, tmp_path_factory):
    from pipelines.flow import prepare
    from pipelines.train import train

    root = tmp_path_factory.mktemp("scoring")
    settings = load_settings(data_dir=root, min_positive_labels=10)
    tables = root / "demo"
    store = prepare(small_world.repo, settings, tables, name="demo", delivery=small_world.repo.parent)
    train("change-risk", settings, tables, FAST)
    train("deploy-failure", settings, tables, FAST)
    return settings, tables, store, small_world.repo


def _plans(deployments: pd.DataFrame):
    from serving.core import DeploymentPlan

    return [
        DeploymentPlan(
            repo="demo",
            service=d.service,
            environment=d.environment,
            commits=list(d.shipped),
            strategy=d.strategy,
            started_at=d.started_at,
        )
        for d in deployments.itertuples(index=False)
    ]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-9)


def test_served_deployment_vectors_equal_the_training_rows_feature_by_feature(world):
    from features.store import feature_names, training_set
    from serving.core import deployment_vectors

    settings, tables, store, _ = world
    deployments = pd.read_parquet(tables / "deployments.parquet")
    entities = deployments[["deploy_id", "started_at"]].rename(columns={"started_at": "event_timestamp"})
    trained = training_set(store, entities, "deploy_failure_v1").set_index("deploy_id")
    names = feature_names(store, "deploy_failure_v1")
    served = deployment_vectors(_plans(deployments), store, settings)
    differing = [
        (d.deploy_id, name, v.features[name], trained.at[d.deploy_id, name])
        for d, v in zip(deployments.itertuples(index=False), served, strict=True)
        for name in names
        if not _same(v.features[name], float(trained.at[d.deploy_id, name]))
    ]
    assert len(deployments) > 1000 and deployments["shipped"].map(len).gt(0).sum() > 100
    assert differing == []


def test_deployment_is_scored_by_the_model_on_its_training_row(world):
    from features.store import training_set
    from models.registry import load
    from serving.core import score_deployment

    settings, tables, store, _ = world
    deployments = pd.read_parquet(tables / "deployments.parquet")
    shipping = deployments[deployments["shipped"].map(len) > 0].tail(5)
    model = load("deploy-failure")
    entities = shipping[["deploy_id", "started_at"]].rename(columns={"started_at": "event_timestamp"})
    rows = (
        training_set(store, entities, model.feature_service).set_index("deploy_id").loc[shipping["deploy_id"]]
    )
    scores = [score_deployment(plan, model, store, settings) for plan in _plans(shipping)]
    assert np.allclose([s.probability for s in scores], model.model.predict_proba(rows))
    assert all(s.model.name == "deploy-failure" and s.drivers for s in scores)


def test_service_health_is_served_as_of_the_query_time_not_the_last_deployment(world):
    from serving.core import DeploymentPlan, deployment_vectors

    settings, tables, store, _ = world
    deployments = pd.read_parquet(tables / "deployments.parquet")
    last = deployments.sort_values("started_at").iloc[-1]
    later = last["started_at"] + pd.Timedelta(hours=1)
    plan = DeploymentPlan("demo", last["service"], last["environment"], [], "canary", later.to_pydatetime())
    vector = deployment_vectors([plan], store, settings)[0]
    same_service = deployments[deployments["service"] == last["service"]]
    week = same_service["started_at"] >= later - pd.Timedelta(days=7)
    # The last deployment counts: it started before the query, though no deployment came after it.
    assert vector.health["deploys_7d"] == float(week.sum())
    assert vector.features["hours_since_previous_deploy"] == pytest.approx(1.0)
    assert vector.features["n_commits"] == 0.0 and vector.features["n_authors"] == 0.0


def test_commit_scores_equal_the_model_prediction_and_explanations_sum_to_the_logit(world):
    from features.store import online_features
    from models.registry import load
    from serving.core import CommitRef, CommitScore, score_commits

    settings, tables, store, _ = world
    shas = list(pd.read_parquet(tables / "commits.parquet")["sha"].tail(10))
    model = load("change-risk")
    results = score_commits([CommitRef("demo", sha) for sha in shas], model, store, settings, top=500)
    rows = online_features(store, model.feature_service, [{"repo": "demo", "sha": s} for s in shas]).rows
    assert all(isinstance(r, CommitScore) for r in results)
    scored = [r for r in results if isinstance(r, CommitScore)]
    assert np.allclose([r.probability for r in scored], model.model.predict_proba(pd.DataFrame(rows)))
    for r in scored:
        total = r.base_value + sum(d.contribution for d in r.drivers)
        assert total == pytest.approx(r.raw_score, abs=1e-6)


def test_an_unknown_sha_is_reported_not_scored(world):
    from models.registry import load
    from serving.core import CommitNotFound, CommitRef, score_commits

    settings, _, store, _ = world
    (result,) = score_commits([CommitRef("demo", "f" * 40)], load("change-risk"), store, settings)
    assert isinstance(result, CommitNotFound) and result.status == 404


@pytest.mark.parametrize("sha, metrics", [(None, None), ("f" * 40, {"la": 1.0})])
def test_a_commit_ref_takes_exactly_one_of_sha_and_metrics(sha, metrics):
    from serving.core import CommitRef

    with pytest.raises(ValueError, match="commit of demo: give a sha or metrics"):
        CommitRef("demo", sha, metrics)


@pytest.mark.parametrize("sha, metrics", [(None, None), ("f" * 40, {"la": 1.0})])
def test_scoring_refuses_an_item_without_exactly_one_of_sha_and_metrics(sha, metrics, tmp_path):
    # Any CommitInput, not only a CommitRef: an item dropped or scored twice shifts every result after it.
    from dataclasses import dataclass

    from serving.core import CommitRef, score_commits

    @dataclass
    class Query:
        repo: str
        sha: str | None
        metrics: dict[str, float] | None

    commits = [CommitRef("demo", metrics={"la": 1.0}), Query("other", sha, metrics)]
    with pytest.raises(ValueError, match=r"commit 1 \(of other\): give a sha or metrics"):
        score_commits(commits, None, None, load_settings(data_dir=tmp_path))  # type: ignore[arg-type]


def test_an_unmined_change_gets_the_metrics_the_miner_would_give_it(world):
    from features.history import commit_tables
    from features.mining.diff import measure_unmined_change

    settings, tables, _, repo = world
    commits = pd.read_parquet(tables / "commits.parquet").sort_values("seq")
    files = pd.read_parquet(tables / "files.parquet")
    last = commits.iloc[-1]
    written = {p.name: p.stat().st_mtime_ns for p in tables.iterdir()}
    change = measure_unmined_change(
        repo, f"{last['sha']}~1", last["sha"], settings, name="demo", at=last["history_at"]
    )
    mined = commit_tables(commits, files)["commit_change"].set_index("sha").loc[last["sha"]]
    # The range's commit was mined already: it is left out of the history, not counted twice.
    assert change.commits == (last["sha"],) and change.history_commits == len(commits) - 1
    assert change.features == {name: float(mined[name]) for name in change.features}
    assert {p.name: p.stat().st_mtime_ns for p in tables.iterdir()} == written


def test_a_pull_request_branch_is_scored_with_the_change_risk_model(world, tmp_path):
    from models.registry import load
    from serving.core import score_unmined_change

    settings, tables, _, repo = world
    work = _pull_request(repo, tmp_path / "pr")
    result = score_unmined_change(
        work, "main", "feature", load("change-risk"), settings, tables=tables, name="demo"
    )
    metrics = result.change.features
    assert metrics["nf"] == 1 and metrics["fix"] == 1.0
    assert metrics["kind_fix"] == 1.0 and metrics["lt"] > 0 and metrics["nuc"] > 0
    assert 0 < result.score.probability < 1 and result.score.sha is None
    # The full change_risk_v1 vector is computed: nothing is scored as unknown, nothing is warned about.
    assert result.score.warnings == [] and result.change.unknown == ()
    assert result.score.features["author_commits_90d"] == 0.0  # Pat has no history in the demo world
    assert (result.score.features["file_changes_max"] or 0.0) > 0  # the file it touches has history


def _pull_request(repo, target_dir):
    """A clone of `repo` with a branch `feature` of one commit by a newcomer, touching a Python file."""
    from tests.conftest import clone, git

    work = clone(repo, target_dir)
    git(work, "checkout", "-q", "-b", "feature")
    target = next(p for p in sorted(work.rglob("*.py")) if ".git" not in p.parts)
    target.write_text(target.read_text() + "\n# fix the retry bug\nRETRIES = 3\n")
    people = (("NAME", "Pat"), ("EMAIL", "pat@x.org"))
    env = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in people}
    git(work, "commit", "-qam", "Fix retry bug", env=env)
    return work


def _parity_sample(commits: pd.DataFrame, files: pd.DataFrame, trained: pd.DataFrame) -> list[str]:
    """Non-merge commits with file changes, chosen to cover the history features: authors with known
    defects, files with prior fixes, a defect of the author that is labelled but not fixed yet at the
    commit (it must not count), and a few ordinary commits."""
    touched = set(files["sha"])
    fixed_at = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    candidates = commits[(commits["parents"].map(len) == 1) & commits["sha"].isin(touched)]
    candidates = candidates[candidates["seq"] > 0]
    rows = trained.loc[candidates["sha"]]
    both = rows[(rows["author_known_defects"] > 0) & (rows["file_defects_max"] > 0)].index
    file_only = rows[(rows["author_known_defects"] == 0) & rows["file_days_since_defect_min"].notna()].index
    plain = rows[rows["file_defects_max"] == 0].index
    pending = []  # the author has a labelled defect before the commit whose first fix lands after it
    for c in candidates.itertuples():
        earlier = commits[(commits["seq"] < c.seq) & (commits["author_id"] == c.author_id)]
        if any(
            label is True
            and fixes is not None
            and len(fixes)
            and min(fixed_at[f] for f in fixes) >= c.committed_at
            for label, fixes in zip(earlier["bug_inducing"], earlier["fixed_by"], strict=True)
        ):
            pending.append(c.sha)
            if len(pending) == 2:
                break
    picked = [*both[:: max(1, len(both) // 4)][:4], *file_only[:2], *plain[-2:], *pending]
    return list(dict.fromkeys(picked))


def test_an_unmined_change_gets_the_training_row_of_the_same_commit_feature_by_feature(world, tmp_path):
    """Each commit measured as an unmined change (its parent to it, as of its history time, against the
    tables truncated to the commits before it) equals its change_risk_v1 training row: the Kamei metrics
    and the author, file and subsystem defect history, a defect counting only once its first fix landed."""
    from features.history import CHANGE_RISK_V1
    from features.mining.diff import measure_unmined_change
    from features.store import feature_names, training_set

    settings, tables, store, repo = world
    commits = pd.read_parquet(tables / "commits.parquet").sort_values("seq")
    files = pd.read_parquet(tables / "files.parquet")
    entities = commits[["repo", "sha", "committed_at"]].rename(columns={"committed_at": "event_timestamp"})
    trained = training_set(store, entities, "change_risk_v1").set_index("sha")
    assert tuple(feature_names(store, "change_risk_v1")) == CHANGE_RISK_V1
    sample = _parity_sample(commits, files, trained)
    differing = []
    for sha in sample:
        c = commits[commits["sha"] == sha].iloc[0]
        before = tmp_path / sha[:12]
        before.mkdir()
        earlier = commits[commits["seq"] < c["seq"]]
        earlier.to_parquet(before / "commits.parquet")
        files[files["sha"].isin(set(earlier["sha"]))].to_parquet(before / "files.parquet")
        change = measure_unmined_change(
            repo, c["parents"][0], sha, settings, tables=before, name="demo", at=c["history_at"]
        )
        assert change.unknown == () and change.history_commits == len(earlier)
        differing += [
            (sha[:8], name, value, float(trained.at[sha, name]))
            for name, value in change.vector.items()
            if not _same(value, float(trained.at[sha, name]))
        ]
    chosen = trained.loc[sample]
    assert len(sample) >= 8 and (chosen["author_known_defects"] > 0).sum() >= 3
    assert (chosen["file_defects_max"] > 0).sum() >= 3 and chosen["file_days_since_defect_min"].notna().any()
    assert differing == []


def test_a_defect_counts_for_an_unmined_change_only_once_its_first_fix_landed_before_it(world):
    from features.mining.diff import measure_unmined_change

    settings, tables, _, repo = world
    commits = pd.read_parquet(tables / "commits.parquet").sort_values("seq")
    fix_time = dict(zip(commits["sha"], commits["committed_at"], strict=True))
    first_fix = {
        c.sha: min(fix_time[f] for f in c.fixed_by)
        for c in commits.itertuples()
        if c.bug_inducing is True and c.fixed_by is not None and len(c.fixed_by) and not c.is_bot
    }
    inducing = max(first_fix, key=lambda sha: first_fix[sha])  # the last defect to become known
    author = commits.set_index("sha").at[inducing, "author_id"]
    fixed = first_fix[inducing]
    landing = sum(
        1
        for sha, t in first_fix.items()
        if t == fixed and commits.set_index("sha").at[sha, "author_id"] == author
    )
    head = commits[(commits["author_id"] == author) & (commits["parents"].map(len) == 1)].iloc[-1]

    def known_defects(at: pd.Timestamp) -> float:
        change = measure_unmined_change(repo, head["parents"][0], head["sha"], settings, name="demo", at=at)
        return change.history["author_known_defects"]

    # At the instant of the fix the defect is not known yet; a microsecond later it is.
    assert known_defects(fixed + pd.Timedelta(microseconds=1)) - known_defects(fixed) == landing >= 1


def test_an_unlabelled_history_names_the_defect_features_it_cannot_know(world, tmp_path):
    from features.history import DEFECT_HISTORY_FEATURES
    from features.tables import LABEL_COLUMNS
    from models.registry import load
    from serving.core import score_unmined_change

    settings, tables, _, repo = world
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    commits = pd.read_parquet(tables / "commits.parquet")
    commits.drop(columns=list(LABEL_COLUMNS)).to_parquet(unlabelled / "commits.parquet")
    pd.read_parquet(tables / "files.parquet").to_parquet(unlabelled / "files.parquet")
    work = _pull_request(repo, tmp_path / "pr")
    result = score_unmined_change(
        work, "main", "feature", load("change-risk"), settings, tables=unlabelled, name="demo"
    )
    assert result.change.unknown == DEFECT_HISTORY_FEATURES
    assert all(math.isnan(result.change.history[n]) for n in DEFECT_HISTORY_FEATURES)
    assert all(result.score.features[n] is None for n in DEFECT_HISTORY_FEATURES)
    (warning,) = result.score.warnings
    assert "not labelled" in warning and all(n in warning for n in DEFECT_HISTORY_FEATURES)
    assert (
        result.change.history["author_commits_90d"] == 0.0 and result.change.history["file_changes_max"] > 0
    )
