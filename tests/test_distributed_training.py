"""The organisation-wide change-risk model trained by LightGBM's data-parallel mode on a real two-node Ray
cluster (head + one worker, one CPU each): both shards are fitted, the model is as good as the local one on
the same held-out period, MLflow records the same metrics, and a dead worker node ends training quickly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["tests.ray_cluster"]

AWO = str(Path(sys.executable).with_name("awo"))
REPOSITORIES = {"alpha": 3, "beta": 5}  # name -> demo world seed
# AUC of ~160 test rows with ~25 positives has a standard error near 0.05 (Hanley & McNeil 1982); the two
# models differ only in bin boundaries (each worker bins its share of the features on its shard), so
# their AUCs must agree well within that.
AUC_TOLERANCE = 0.05
# bagging off: the first tree's root then counts every row it was fitted on, on any number of workers
FAST = "n_estimators: 300\nlearning_rate: 0.05\nsubsample: 1.0\n"
# long enough (tens of seconds) for a node to die mid-fit
SLOW = "n_estimators: 20000\nlearning_rate: 0.0005\nsubsample: 1.0\nearly_stopping_rounds: 20000\n"


@pytest.fixture(scope="module", autouse=True)
def ray_without_token_auth() -> Iterator[None]:
    """Ray 2.60 turns token auth on for `ray start --head` once ~/.ray/auth_token exists (any local
    ray.init() writes it), while a driver connecting by address sends no token unless RAY_AUTH_MODE says
    so: the cluster then refuses its own probe. This module's nodes and drivers all run without it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield


@pytest.fixture(scope="module")
def organisation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with two generated repositories mined, labelled and built into one Feast store."""
    from features.settings import load_settings
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    root = tmp_path_factory.mktemp("org")
    settings = load_settings(data_dir=root / "data", min_positive_labels=10)
    for name, seed in REPOSITORIES.items():
        world = generate_world(root / f"world-{name}", seed=seed, n_commits=500)
        prepare(world.repo, settings, settings.data_dir / name, name=name)
    for name, config in (("fast", FAST), ("slow", SLOW)):
        (root / f"{name}.yaml").write_text(config)
    return root


def awo_env(root: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "AWO_DATA_DIR": str(root / "data"),
        "AWO_MIN_POSITIVE_LABELS": "10",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def awo(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`awo ARGS` on the organisation's data root, run to its end (the driver is its own process)."""
    return subprocess.run([AWO, *args], env=awo_env(root), text=True, capture_output=True, timeout=900)


def registered(root: Path, stdout: str):
    """(model version, its MLflow run) of the version `awo train` printed."""
    from mlflow.tracking import MlflowClient

    from features.settings import load_settings
    from models.registry import connect

    version = stdout.split("version ", 1)[1].split()[0]
    connect(load_settings(data_dir=root / "data"))
    client = MlflowClient()
    run_id = client.get_model_version("change-risk", version).run_id
    assert run_id is not None
    return version, client.get_run(run_id)


@pytest.fixture(scope="module")
def local_run(organisation: Path):
    done = awo(organisation, "train", "change-risk", "--org", "--config", str(organisation / "fast.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    return registered(organisation, done.stdout)


@pytest.fixture(scope="module")
def ray_run(organisation: Path, ray_cluster):
    ray_cluster.add_worker(num_cpus=1)
    started = time.monotonic()
    done = awo(
        organisation, "train", "change-risk", "--org", "--ray", ray_cluster.address, "--workers", "2",
        "--config", str(organisation / "fast.yaml"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return (*registered(organisation, done.stdout), done, time.monotonic() - started)


def test_org_model_trains_on_every_labelled_repository(organisation: Path, local_run):
    from features.settings import load_settings
    from pipelines.train import labelled_repositories

    _, run = local_run
    assert [
        p.name for p in labelled_repositories(load_settings(data_dir=organisation / "data").data_dir)
    ] == [
        "alpha",
        "beta",
    ]
    assert run.data.params["trainer"] == "local" and run.data.params["repositories"] == "2"
    assert "workers" not in run.data.params


def test_distributed_model_fits_the_rows_of_both_workers(ray_run):
    from models.registry import load_version

    version, run, done, _ = ray_run
    assert "training on 2 Ray workers" in done.stderr
    assert run.data.params["trainer"] == "ray" and run.data.params["workers"] == "2"
    model = load_version("change-risk", version, "challenger").model
    fitted = sum(int(run.data.params[f"rows_{k}"]) for k in ("train", "validation", "calibration"))
    root = model.booster_.booster_.dump_model()["tree_info"][0]["tree_structure"]
    # data-parallel trees count the rows of every shard; one worker alone holds half of them
    assert root["internal_count"] == fitted
    assert "machines" not in model.booster_.get_params()  # a one-machine model once trained


def test_distributed_model_is_as_good_as_the_local_one_and_logged_alike(local_run, ray_run):
    _, local = local_run
    _, distributed, _, seconds = ray_run
    assert set(distributed.data.metrics) == set(local.data.metrics)
    assert local.data.params["rows_test"] == distributed.data.params["rows_test"]
    assert local.data.params["test_from"] == distributed.data.params["test_from"]
    auc_local, auc_ray = local.data.metrics["test_auc"], distributed.data.metrics["test_auc"]
    print(f"test AUC local {auc_local:.4f}, ray {auc_ray:.4f}, ray run {seconds:.0f} s")
    assert auc_ray > 0.55 and abs(auc_ray - auc_local) <= AUC_TOLERANCE


def test_registered_distributed_model_scores_and_explains_the_held_out_rows(organisation: Path, ray_run):
    from features.settings import load_settings
    from features.store import open_store
    from models.registry import load_version
    from models.training import held_out
    from pipelines.train import org_change_risk_data

    version, *_ = ray_run
    settings = load_settings(data_dir=organisation / "data", min_positive_labels=10)
    data, repositories = org_change_risk_data(settings, open_store(settings))
    _, test = held_out(data, 30.0)
    model = load_version("change-risk", version, "challenger").model
    probability = model.predict_proba(test)
    assert repositories == ["alpha", "beta"] and set(test["repo"]) == {"alpha", "beta"}
    assert probability.shape == (len(test),) and ((probability > 0) & (probability < 1)).all()
    contributions = model.contributions(test)
    np.testing.assert_allclose(contributions.sum(axis=1), model.raw_score(test), atol=1e-6)


def test_retrain_of_the_organisation_on_ray_runs_every_stage_and_the_promotion_gate(
    organisation: Path, ray_run, ray_cluster
):
    """`awo retrain ORG --ray ADDRESS`: mining and labelling one Ray task per repository (both up to date or
    relabelled in place), features rebuilt, the organisation-wide model trained across the workers and
    judged by the promotion gate on the organisation's held-out period."""
    org = organisation / "org"
    org.mkdir(exist_ok=True)
    for (
        name
    ) in REPOSITORIES:  # links named as the data root names them: the repositories' own folders are "repo"
        link = org / name
        if not link.exists():
            link.symlink_to(organisation / f"world-{name}" / "repo")
    done = awo(organisation, "retrain", str(org), "--ray", ray_cluster.address)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "mine: 2 repositories on Ray" in out and "0 failed" in out
    assert "label: 2 repositories on Ray" in out
    assert "3. features: 2 repositories" in out
    version = out.split("4. train: change-risk v", 1)[1].split()[0]
    assert int(version) > int(ray_run[0])
    assert "5. promote: " in out and ("promoted to champion" in out or "champion kept" in out)
    assert "Traceback" not in done.stderr


def test_a_worker_node_dying_mid_fit_ends_training_with_one_line_naming_it(organisation: Path, ray_cluster):
    if ray_cluster.alive_nodes() < 2:
        ray_cluster.add_worker(num_cpus=1)
    worker = len(ray_cluster.nodes) - 1
    process = subprocess.Popen(
        [AWO, "train", "change-risk", "--org", "--ray", ray_cluster.address,
         "--config", str(organisation / "slow.yaml")],
        env=awo_env(organisation), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        for line in process.stderr:  # the workers are placed and about to fit
            if line.startswith("training on 2 Ray workers"):
                break
        time.sleep(5)
        assert process.poll() is None, "training ended before the node was killed"
        killed = time.monotonic()
        ray_cluster.kill_node(worker)
        _, stderr = process.communicate(timeout=180)
        waited = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    print(f"training ended {waited:.0f} s after the node died: {errors}")
    assert process.returncode == 2 and len(errors) == 1
    assert "training worker" in errors[0] and ("died" in errors[0] or "failed" in errors[0])
    assert "Traceback" not in stderr


def test_shards_span_the_whole_period_and_cover_every_row_once():
    from models.distributed import shard_rows

    shards = shard_rows(11, 3)
    assert [len(s) for s in shards] == [4, 4, 3]
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))
    assert all(s[0] < 3 and s[-1] >= 8 for s in shards)  # each reaches from the oldest rows to the newest


def test_two_workers_on_one_endpoint_are_refused():
    from models.distributed import TrainingWorkerLost, WorkerPlace, machine_list

    places = [WorkerPlace(1, "10.0.0.2", 4100, "b" * 56), WorkerPlace(0, "10.0.0.1", 4100, "a" * 56)]
    assert machine_list(places) == "10.0.0.1:4100,10.0.0.2:4100"  # rank order
    with pytest.raises(TrainingWorkerLost, match="same endpoint"):
        machine_list([WorkerPlace(0, "10.0.0.1", 4100, "a"), WorkerPlace(1, "10.0.0.1", 4100, "b")])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["change-risk"], "--data DIR for one repository, or --org"),
        (["change-risk", "--data", "x", "--org"], "leave out --data"),
        (["change-risk", "--data", "x", "--ray"], "add --org"),
        (["deploy-failure", "--org"], "trains change-risk only"),
        (["change-risk", "--org", "10.0.0.1:6379"], "a cluster address follows --ray"),
        (["change-risk", "--org", "--workers", "3"], "add --ray"),
    ],
)
def test_train_scope_mistakes_are_one_line_errors(tmp_path: Path, args: list[str], message: str):
    done = subprocess.run(
        [AWO, "train", *args], env=awo_env(tmp_path), text=True, capture_output=True, timeout=120
    )
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
