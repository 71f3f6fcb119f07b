"""Rollouts end to end on a real API server (tests/k8s_cluster.py): a plan carried out by the
KubernetesExecutor with the real canary analyst judging metric files, its analyses audited with their
evidence, its outcome fed back as a deployment row; pause and abort through `awo rollout`."""

from __future__ import annotations

import csv
import getpass
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from kubernetes import client
from typer.testing import CliRunner

from agents.audit import AuditLog
from agents.goals import parse_goal
from agents.judge import AnalysisTemplate, MetricSpec
from agents.kube import KubernetesExecutor
from agents.monitor import CanaryAnalyst, ManualClock, MetricFileSource
from agents.planner import load_plan, plan_goal, save_plan
from agents.policy import load_policy
from agents.rollout_state import RolloutStore
from agents.rollouts import RolloutError, carry_out, deployment_outcomes, plan_from_file
from features.delivery import DeploymentRow
from features.settings import Settings, load_settings
from pipelines.cli import app

if TYPE_CHECKING:
    from tests.k8s_cluster import FakeKubelet, K8sCluster

pytest_plugins = ["tests.k8s_cluster"]

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "agents" / "default_policy.yaml"
ERRORS = MetricSpec(
    name="error_rate",
    kind="rate",
    numerator="errors",
    denominator="requests",
    tolerance=0.2,
    alpha=0.001,
    critical=True,
)
TEMPLATE = AnalysisTemplate(metrics=[ERRORS], interval="1s", count=3)


def _metric_file(path: Path, errors: list[int], requests: int = 2000) -> Path:
    rows = ["timestamp,metric,value"]
    for i, e in enumerate(errors):
        stamp = f"2026-11-24T10:{i:02d}:00Z"
        rows += [f"{stamp},errors,{e}", f"{stamp},requests,{requests}"]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    """The default policy with second-long canary pauses, no deploy windows, and the test's user allowed
    to approve (a plan without a decision has the fail-closed gate senior_review)."""
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    for template in doc["rollout"].values():
        template["steps"] = [
            {"pause": "1s"} if "pause" in step else step for step in template.get("steps", [])
        ]
        template["bake_time"] = "1s"
    doc["schedule"]["windows_for"] = []
    doc["schedule"]["avoid_peak_share"] = 1.0
    doc["overrides"]["allowed"] = [getpass.getuser()]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Shop:
    """A `pay` Deployment (4 replicas of image :1) and Service in a production and a staging namespace."""

    cluster: K8sCluster
    api: Any
    production: str
    staging: str
    settings: Settings
    slept: list[float] = field(default_factory=list)

    @property
    def apps(self) -> Any:
        return client.AppsV1Api(self.api)

    def create(self, namespace: str) -> None:
        labels = {"app": "pay"}
        spec = {
            "replicas": 4,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "pay", "image": "registry.local/pay:1"}]},
            },
        }
        self.apps.create_namespaced_deployment(namespace, {"metadata": {"name": "pay"}, "spec": spec})
        body = {"metadata": {"name": "pay"}, "spec": {"selector": labels, "ports": [{"port": 80}]}}
        client.CoreV1Api(self.api).create_namespaced_service(namespace, body)
        self.cluster.wait_until(lambda: self.images(namespace) == {"pay": (4, "registry.local/pay:1")})

    def images(self, namespace: str) -> dict[str, tuple[int, str]]:
        """Deployment -> (replicas, image) of the available pods' Deployments in `namespace`."""
        out = {}
        for dep in self.apps.list_namespaced_deployment(namespace).items:
            if (dep.status.available_replicas or 0) == dep.spec.replicas:
                out[dep.metadata.name] = (dep.spec.replicas, dep.spec.template.spec.containers[0].image)
        return out

    def executor(self, rollout_id: str, analyst: CanaryAnalyst) -> KubernetesExecutor:
        return KubernetesExecutor(
            self.api,
            namespace=self.production,
            namespaces={"staging": self.staging},
            rollout_id=rollout_id,
            state=RolloutStore.in_data_root(self.settings.data_dir),
            analyst=analyst,
            poll_seconds=0.1,
            timeout_seconds=30,
            sleep=self.slept.append,
        )


@pytest.fixture
def shop(k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet, tmp_path: Path) -> Iterator[Shop]:
    production, staging = k8s_cluster.namespace("prod"), k8s_cluster.namespace("stage")
    settings = load_settings(data_dir=tmp_path / "data")
    with k8s_cluster.api_client() as api:
        world = Shop(k8s_cluster, api, production, staging, settings)
        world.create(production)
        world.create(staging)
        yield world
    assert not fake_kubelet.errors


SHA = "3f2a9c1"


def _plan(policy_file: Path, service: str = "pay") -> Any:
    return plan_goal(parse_goal(f"ship {SHA} of {service} to production"), None, load_policy(policy_file))


def _analyst(tmp_path: Path, canary_errors: list[int]) -> CanaryAnalyst:
    source = MetricFileSource(
        _metric_file(tmp_path / "baseline.csv", [20, 21, 19]),
        _metric_file(tmp_path / "canary.csv", canary_errors),
    )
    return CanaryAnalyst(TEMPLATE, source, clock=ManualClock())


def _feedback(settings: Settings) -> dict[tuple[str, str], dict[str, str]]:
    path = settings.data_dir / "feedback" / "deployments.csv"
    rows = list(csv.DictReader(path.open()))
    for row in rows:  # every row is valid input for `awo ingest deployments`
        DeploymentRow.model_validate({k: v or None for k, v in row.items()})
    return {(r["service"], r["environment"]): r for r in rows}


def _audit(settings: Settings) -> list[dict[str, Any]]:
    log = AuditLog(settings.data_dir / "audit", settings.audit_secret.get_secret_value())
    assert log.verify().ok
    return [json.loads(line) for line in log.log_path.read_text().splitlines()]


def test_a_healthy_canary_is_promoted_on_the_cluster_audited_and_fed_back_as_succeeded(
    shop: Shop, policy_file: Path, tmp_path: Path
) -> None:
    plan = _plan(policy_file)
    executor = shop.executor(plan.plan_id, _analyst(tmp_path, [20, 22, 18]))

    run = carry_out(plan, shop.settings, executor=executor, approved_by=getpass.getuser())

    assert run.report.outcome == "succeeded", run.report.summary_lines()
    new = f"registry.local/pay:{SHA}"
    shop.cluster.wait_until(lambda: shop.images(shop.production) == {"pay": (4, new)}, what="promoted")
    assert shop.images(shop.staging) == {"pay": (4, new)}  # staging rolled in its own namespace
    outcomes = _feedback(shop.settings)
    assert outcomes[("pay", "production")]["outcome"] == "succeeded"
    assert outcomes[("pay", "production")]["strategy"] == plan.strategy
    assert outcomes[("pay", "staging")]["outcome"] == "succeeded"
    analyses = [r for r in _audit(shop.settings) if r["kind"] == "canary_analysis"]
    assert len(analyses) == 1 and analyses[0]["task"] == "canary:pay"
    pauses = sum(1 for s in plan.task("canary:pay").params["steps"] if "pause" in s)
    assert [v["action"] for v in analyses[0]["verdicts"]] == ["promote"] * pauses  # one AnalysisRun a pause
    first = analyses[0]["verdicts"][0]["intervals"][-1]["results"][0]
    assert first["name"] == "error_rate" and first["classification"] == "Pass"


def test_an_error_spike_rolls_the_canary_back_by_itself_with_evidence_incident_and_label(
    shop: Shop, policy_file: Path, tmp_path: Path
) -> None:
    plan = _plan(policy_file)
    executor = shop.executor(plan.plan_id, _analyst(tmp_path, [100, 110, 95]))

    run = carry_out(plan, shop.settings, executor=executor, approved_by=getpass.getuser())

    assert run.report.outcome == "blocked" and run.report.exit_code == 4
    assert run.report.plan.task("canary:pay").detail.startswith("analysis at step 1: rollback")
    shop.cluster.wait_until(
        lambda: shop.images(shop.production) == {"pay": (4, "registry.local/pay:1")}, what="restored"
    )
    assert _feedback(shop.settings)[("pay", "production")]["outcome"] == "rolled-back"
    incidents = list(csv.DictReader((shop.settings.data_dir / "feedback" / "incidents.csv").open()))
    assert len(incidents) == 1 and incidents[0]["service"] == "pay"
    records = _audit(shop.settings)
    analysis = next(r for r in records if r["kind"] == "canary_analysis")
    assert analysis["action"] == "rollback"
    failed = analysis["verdicts"][-1]["intervals"][0]
    assert failed["failed_critical"] == ["error_rate"]
    errors = failed["results"][0]
    assert (
        errors["classification"] == "High"
        and errors["p_value"] < 0.001
        and errors["canary"] > 4 * errors["baseline"]
    )
    assert any(r["kind"] == "plan_run" and r["outcome"] == "blocked" for r in records)


def _cli_env(shop: Shop, policy_file: Path) -> dict[str, str]:
    return {
        "AWO_DATA_DIR": str(shop.settings.data_dir),
        "AWO_EXECUTOR": "kubernetes",
        "AWO_KUBECONFIG": str(shop.cluster.kubeconfig),
        "AWO_KUBE_NAMESPACE": shop.production,
        "AWO_KUBE_NAMESPACES": json.dumps({"staging": shop.staging}),
        "AWO_KUBE_POLL_SECONDS": "0.1",
        "AWO_POLICY": str(policy_file),
    }


def _start_and_pause_the_canary(
    runner: CliRunner, plan: Any, plan_file: Path, env: dict[str, str], shop: Shop
):
    """`awo rollout start`, while a person runs `awo rollout pause` once the production canary is under way
    (its pauses last a second each: the request lands between its steps)."""
    store = RolloutStore.in_data_root(shop.settings.data_dir)

    def pause_when_the_canary_runs() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = store.get(plan.plan_id, "pay", "production") if store.path.is_file() else None
            if record is not None and record.step >= 1:
                store.request(plan.plan_id, "pause")
                return
            time.sleep(0.05)

    person = threading.Thread(target=pause_when_the_canary_runs)
    person.start()
    try:
        return runner.invoke(app, ["rollout", "start", str(plan_file), "--approve"], env=env)
    finally:
        person.join()


def test_awo_rollout_pauses_on_request_and_abort_rolls_back_and_records_aborted(
    shop: Shop, policy_file: Path, tmp_path: Path
) -> None:
    plan = _plan(policy_file)
    plan_file = tmp_path / "plan.yaml"
    save_plan(plan, plan_file)
    env = _cli_env(shop, policy_file)
    runner = CliRunner()
    started = _start_and_pause_the_canary(runner, plan, plan_file, env, shop)

    assert started.exit_code == 3, started.output
    assert f"plan {plan.plan_id} paused at canary:pay" in started.output
    status = runner.invoke(app, ["rollout", "status", plan.plan_id, "--json"], env=env)
    doc = json.loads(status.output)
    assert {t["id"]: t["status"] for t in doc["tasks"]}["canary:pay"] == "paused"
    phases = {(t["service"], t["environment"]): t["phase"] for t in doc["targets"]}
    assert phases == {("pay", "production"): "paused", ("pay", "staging"): "promoted"}
    assert _feedback(shop.settings)[("pay", "production")]["outcome"] == "paused"

    aborted = runner.invoke(app, ["rollout", "abort", plan.plan_id, "--approve"], env=env)

    assert aborted.exit_code == 4, aborted.output
    shop.cluster.wait_until(
        lambda: shop.images(shop.production) == {"pay": (4, "registry.local/pay:1")}, what="restored"
    )
    row = _feedback(shop.settings)[("pay", "production")]
    assert row["outcome"] == "aborted" and row["finished_at"]
    kinds = [(r["kind"], r.get("outcome")) for r in _audit(shop.settings) if r["kind"].startswith("plan_")]
    assert kinds == [("plan_paused", None), ("plan_run", "blocked")]
    assert _feedback(shop.settings)[("pay", "staging")]["outcome"] == "succeeded"


def test_awo_rollout_resume_carries_a_paused_rollout_to_the_end_and_audits_its_outcome(
    shop: Shop, policy_file: Path, tmp_path: Path
) -> None:
    plan = _plan(policy_file)
    plan_file = tmp_path / "plan.yaml"
    save_plan(plan, plan_file)
    env = _cli_env(shop, policy_file)
    runner = CliRunner()
    assert _start_and_pause_the_canary(runner, plan, plan_file, env, shop).exit_code == 3

    resumed = runner.invoke(app, ["rollout", "resume", plan.plan_id, "--approve"], env=env)

    assert resumed.exit_code == 0, resumed.output
    new = f"registry.local/pay:{SHA}"
    shop.cluster.wait_until(lambda: shop.images(shop.production) == {"pay": (4, new)}, what="promoted")
    assert _feedback(shop.settings)[("pay", "production")]["outcome"] == "succeeded"
    kinds = [(r["kind"], r.get("outcome")) for r in _audit(shop.settings) if r["kind"].startswith("plan_")]
    assert kinds == [("plan_paused", None), ("plan_run", "succeeded")]


def test_a_decision_written_by_awo_decide_is_planned_and_a_bad_one_names_the_field(
    policy_file: Path, tmp_path: Path
) -> None:
    from tests.test_planner import SHA as DECIDED
    from tests.test_planner import decision

    made = decision(services=["payments"], gate="standard")
    path = tmp_path / "decision.json"
    path.write_text(made.model_dump_json())
    plan = plan_from_file(path, load_policy(policy_file))
    assert plan.goal.describe() == f"ship {DECIDED} of payments to production"
    assert plan.decision_id == made.decision_id and plan.gate == "standard"
    assert "canary:payments" in [t.id for t in plan.tasks]
    doc = json.loads(path.read_text())
    del doc["rollout_plan"]
    path.write_text(json.dumps(doc))
    with pytest.raises(RolloutError, match="decision field rollout_plan: Field required"):
        plan_from_file(path, load_policy(policy_file))


def test_an_unknown_rollout_is_named_and_a_dry_run_one_cannot_be_paused(
    policy_file: Path, tmp_path: Path
) -> None:
    env = {"AWO_DATA_DIR": str(tmp_path / "data"), "AWO_POLICY": str(policy_file)}
    runner = CliRunner()
    unknown = runner.invoke(app, ["rollout", "status", "nope"], env=env)
    assert unknown.exit_code == 2 and "rollout 'nope': no such rollout" in unknown.output
    plan_file = tmp_path / "plan.yaml"
    save_plan(_plan(policy_file), plan_file)
    ran = runner.invoke(app, ["rollout", "start", str(plan_file), "--approve"], env=env)
    assert ran.exit_code == 0, ran.output
    plan_id = load_plan(plan_file).plan_id
    assert "outcome succeeded of pay in production recorded" in ran.output
    paused = runner.invoke(app, ["rollout", "pause", plan_id], env=env)
    assert paused.exit_code == 2 and "ran on the dry-run executor" in paused.output
    import fcntl

    with open(tmp_path / "data" / "rollouts" / f"{plan_id}.lock", "a") as held:  # another run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        twice = runner.invoke(app, ["rollout", "start", str(plan_file), "--approve"], env=env)
    assert twice.exit_code == 2 and "being carried out by another process" in twice.output


def test_outcomes_follow_the_tasks(policy_file: Path) -> None:
    plan = _plan(policy_file)
    assert deployment_outcomes(plan) == []  # nothing deployed yet: nothing to record
