"""The KubernetesExecutor against a real API server and controllers (tests/k8s_cluster.py): full, canary,
blue-green and Argo rollouts write, read back and roll back real objects, and a killed executor resumes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from agents.executor import DryRunExecutor
from agents.judge import RunVerdict
from agents.kube import (
    KubernetesExecutor,
    argo_steps,
    executor_from_settings,
    image_for_ref,
    replica_split,
    tag_of,
)
from agents.planner import Task
from agents.rollout_state import RolloutNotFound, RolloutStore
from features.errors import BadConfig
from features.settings import load_settings

if TYPE_CHECKING:
    from tests.k8s_cluster import FakeKubelet, K8sCluster

pytest_plugins = ["tests.k8s_cluster"]  # k8s_cluster, k8s_namespace, fake_kubelet

ROOT = Path(__file__).resolve().parents[1]
STEPS = [{"set_weight": 25}, {"pause": "1m"}, {"set_weight": 50}, {"pause": "2m"}, {"set_weight": 100}]


# --- pure decisions ---------------------------------------------------------------------------------------


def test_replica_split_rounds_the_canary_up_and_keeps_a_stable_pod_until_100() -> None:
    assert replica_split(4, 25) == (3, 1)
    assert replica_split(4, 50) == (2, 2)
    assert replica_split(4, 100) == (0, 4)
    assert replica_split(10, 5) == (9, 1)
    assert replica_split(1, 50) == (1, 1)  # one pod each rather than dropping the stable version
    assert replica_split(3, 0) == (3, 0)


def test_image_for_ref_replaces_the_tag_or_digest_and_keeps_the_registry_port() -> None:
    assert image_for_ref("registry.local:5000/team/web:1.2", "v2") == "registry.local:5000/team/web:v2"
    assert image_for_ref("registry.local:5000/web", "abc123") == "registry.local:5000/web:abc123"
    assert image_for_ref("web@sha256:" + "0" * 64, "v3") == "web:v3"
    assert tag_of("registry.local:5000/web:v2") == "v2"
    assert argo_steps([{"set_weight": 25}, {"pause": "1m"}]) == [
        {"setWeight": 25},
        {"pause": {"duration": "1m"}},
    ]


def test_the_store_refuses_unknown_actions_and_rollouts(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.db")
    with pytest.raises(RolloutNotFound, match="'nope'"):
        store.request("nope", "pause")
    store.begin(
        "r1", "web", "production", "canary:web", namespace="ns", strategy="canary", mode="deployment",
        total_replicas=4, previous_image="web:1", previous_replicas=4, canary_image="web:2",
    )  # fmt: skip
    with pytest.raises(BadConfig, match="'explode'"):
        store.request("r1", "explode")
    store.request("r1", "pause")
    status = store.status("r1")
    assert status.requested == "pause"
    assert [t.phase for t in status.targets] == ["progressing"]
    assert [e.kind for e in status.events] == ["started", "requested"]


# --- the cluster ------------------------------------------------------------------------------------------


@dataclass
class World:
    cluster: K8sCluster
    ns: str
    api: Any
    store: RolloutStore
    kubelet: FakeKubelet
    slept: list[float] = field(default_factory=list)

    @property
    def apps(self) -> Any:  # the client's Optional-everywhere models would need a check per field
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    def executor(self, analyst: Any = None, rollout_id: str = "r1", sleep: Any = None) -> KubernetesExecutor:
        return KubernetesExecutor(
            self.api,
            namespace=self.ns,
            rollout_id=rollout_id,
            state=self.store,
            analyst=analyst,
            poll_seconds=0.1,
            timeout_seconds=30,
            sleep=sleep or self.slept.append,
        )

    def deploy(self, name: str, image: str, replicas: int, deadline_s: int | None = None) -> None:
        labels = {"app": name}
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        }
        if deadline_s is not None:
            spec["progressDeadlineSeconds"] = deadline_s
        self.apps.create_namespaced_deployment(self.ns, {"metadata": {"name": name}, "spec": spec})
        self.cluster.wait_until(lambda: self.available(name, replicas), what=f"{name} available")
        body = {"metadata": {"name": name}, "spec": {"selector": labels, "ports": [{"port": 80}]}}
        self.core.create_namespaced_service(self.ns, body)

    def available(self, name: str, replicas: int) -> bool:
        st = self.apps.read_namespaced_deployment(name, self.ns).status
        return (st.available_replicas or 0) == replicas and (st.updated_replicas or 0) == replicas

    def split(self, name: str) -> dict[str, tuple[int, str]]:
        """Deployment name -> (replicas, image) of the service's Deployments."""
        out = {}
        for dep in self.apps.list_namespaced_deployment(self.ns).items:
            if dep.metadata.name.startswith(name):
                out[dep.metadata.name] = (dep.spec.replicas, dep.spec.template.spec.containers[0].image)
        return out

    def step_events(self, rollout_id: str = "r1") -> list[tuple[int | None, str]]:
        return [(e.step, e.detail) for e in self.store.events(rollout_id) if e.kind == "step"]


@pytest.fixture
def world(
    k8s_cluster: K8sCluster, k8s_namespace: str, fake_kubelet: FakeKubelet, tmp_path: Path
) -> Iterator[World]:
    with k8s_cluster.api_client() as api:
        yield World(k8s_cluster, k8s_namespace, api, RolloutStore(tmp_path / "rollouts.db"), fake_kubelet)
    assert not fake_kubelet.errors


@dataclass
class ScriptedAnalyst:
    """Answers the scripted verdicts in order and notes what the world looked like when asked."""

    world: World
    actions: list[str]
    calls: list[tuple[str, str, str, int]] = field(default_factory=list)
    seen: list[dict[str, tuple[int, str]]] = field(default_factory=list)

    def analyse(
        self, service: str, environment: str, stable_ref: str, canary_ref: str, step: int
    ) -> RunVerdict:
        self.calls.append((service, stable_ref, canary_ref, step))
        self.seen.append(self.world.split(service))
        action = self.actions[len(self.calls) - 1]
        return RunVerdict(action=action, why=f"scripted {action} at step {step}")  # type: ignore[arg-type]


def _task(kind: str, service: str, **params: Any) -> Task:
    return Task.model_validate(
        {
            "id": f"{kind}:{service}",
            "kind": kind,
            "service": service,
            "environment": "production",
            "params": params,
        }
    )


def test_full_rollout_patches_the_image_waits_for_the_new_replica_set_and_a_rerun_changes_nothing(
    world: World,
) -> None:
    world.deploy("web", "registry.local/web:1", 2)
    progress: list[str] = []
    executor = world.executor()
    executor.on_progress = progress.append
    task = _task("deploy", "web", ref="2", strategy="rolling")

    result = executor.run(task)

    assert result.status == "succeeded", result.detail
    assert result.actions == ["set deployment web image registry.local/web:2, 2 replicas"]
    dep = world.apps.read_namespaced_deployment("web", world.ns)
    assert dep.spec.template.spec.containers[0].image == "registry.local/web:2"
    assert dep.status.available_replicas == 2 and dep.status.updated_replicas == 2
    assert dep.metadata.annotations["awo.dev/previous-image"] == "registry.local/web:1"
    assert dep.metadata.annotations["awo.dev/rollout-id"] == "r1"
    assert any("2/2 updated" in line for line in progress)
    version = dep.metadata.resource_version

    again = world.executor().run(task)

    assert again.status == "succeeded" and again.actions == []
    assert world.apps.read_namespaced_deployment("web", world.ns).metadata.resource_version == version
    assert world.store.get("r1", "web", "production").phase == "promoted"  # type: ignore[union-attr]


def test_full_rollout_of_a_crash_looping_image_fails_and_the_rollback_restores_it(world: World) -> None:
    world.kubelet.fail_image("registry.local/api:bad")
    world.deploy("api", "registry.local/api:1", 2, deadline_s=2)

    result = world.executor().run(_task("deploy", "api", ref="bad"))

    assert result.status == "failed"
    assert "deployment api: progress deadline exceeded" in result.detail
    assert world.store.get("r1", "api", "production").phase == "failed"  # type: ignore[union-attr]

    back = world.executor().run(_task("rollback", "api", to="previous", **{"from": "bad"}))

    assert back.status == "succeeded", back.detail
    assert back.actions == ["restore deployment api: registry.local/api:1, 2 replicas"]
    assert world.split("api") == {"api": (2, "registry.local/api:1")}
    assert world.available("api", 2)
    assert world.store.get("r1", "api", "production").phase == "rolled-back"  # type: ignore[union-attr]


def test_a_rollback_from_another_run_restores_the_image_the_annotations_name(world: World) -> None:
    world.deploy("docs", "registry.local/docs:1", 2)
    assert world.executor(rollout_id="ship").run(_task("deploy", "docs", ref="2")).status == "succeeded"

    # a later rollback plan has its own rollout id: no record, so the Deployment's awo.dev annotations say
    back = world.executor(rollout_id="undo").run(_task("rollback", "docs", to="previous", **{"from": "2"}))

    assert back.status == "succeeded", back.detail
    assert back.actions == ["set deployment docs image registry.local/docs:1, 2 replicas"]
    assert world.split("docs") == {"docs": (2, "registry.local/docs:1")}
    again = world.executor(rollout_id="undo").run(_task("rollback", "docs", to="previous", **{"from": "2"}))
    assert again.actions == [] and again.detail == "2 is not running: nothing to roll back"


def test_executor_from_settings_builds_the_configured_executor(
    k8s_cluster: K8sCluster, k8s_namespace: str, tmp_path: Path
) -> None:
    dry = executor_from_settings(load_settings(data_dir=tmp_path), "r1")
    assert isinstance(dry, DryRunExecutor)

    settings = load_settings(
        executor="kubernetes",
        kubeconfig=k8s_cluster.kubeconfig,
        kube_namespace=k8s_namespace,
        data_dir=tmp_path,
    )
    kube = executor_from_settings(settings, "r1")
    assert isinstance(kube, KubernetesExecutor)
    assert kube.namespace == k8s_namespace and kube.state.path == tmp_path / "rollouts.db"
    missing = kube.run(_task("deploy", "nothing-here", ref="2"))
    assert missing.detail == f"deployment nothing-here in namespace {k8s_namespace}: not found"

    with pytest.raises(BadConfig, match="does-not-exist"):
        executor_from_settings(
            load_settings(executor="kubernetes", kubeconfig=tmp_path / "does-not-exist", data_dir=tmp_path),
            "r1",
        )


def test_canary_steps_split_the_replicas_and_promote_leaves_only_the_stable_with_the_new_image(
    world: World,
) -> None:
    world.deploy("pay", "registry.local/pay:1", 4)
    analyst = ScriptedAnalyst(world, ["continue", "promote"])
    executor = world.executor(analyst)

    result = executor.run(_task("canary", "pay", ref="2", strategy="canary", steps=STEPS))

    assert result.status == "succeeded", result.detail
    new = "registry.local/pay:2"
    assert analyst.seen == [
        {"pay": (3, "registry.local/pay:1"), "pay-canary": (1, new)},  # at 25%
        {"pay": (2, "registry.local/pay:1"), "pay-canary": (2, new)},  # at 50%
    ]
    assert analyst.calls == [("pay", "1", "2", 1), ("pay", "1", "2", 3)]
    assert world.split("pay") == {"pay": (0, "registry.local/pay:1"), "pay-canary": (4, new)}
    canary = world.apps.read_namespaced_deployment("pay-canary", world.ns)
    assert canary.spec.selector.match_labels == {"app": "pay", "track": "canary"}
    assert canary.status.available_replicas == 4
    assert [v.action for v in executor.verdicts["canary:pay"]] == ["continue", "promote"]
    assert world.store.get("r1", "pay", "production").verdict["action"] == "promote"  # type: ignore[index,union-attr]

    promoted = executor.run(_task("promote", "pay", ref="2", strategy="canary", weight=100))

    assert promoted.status == "succeeded", promoted.detail
    world.cluster.wait_until(lambda: world.split("pay") == {"pay": (4, new)}, what="canary deleted")
    assert world.available("pay", 4)
    assert world.store.get("r1", "pay", "production").phase == "promoted"  # type: ignore[union-attr]
    assert executor.run(_task("promote", "pay", ref="2")).actions == []


def test_an_analysis_rollback_at_the_second_pause_deletes_the_canary_and_restores_the_stable(
    world: World,
) -> None:
    world.deploy("cart", "registry.local/cart:1", 4)
    analyst = ScriptedAnalyst(world, ["continue", "rollback"])

    result = world.executor(analyst).run(_task("canary", "cart", ref="2", steps=STEPS))

    assert result.status == "failed"
    assert result.detail == "analysis at step 3: rollback: scripted rollback at step 3"
    assert "delete deployment cart-canary" in result.actions
    world.cluster.wait_until(
        lambda: world.split("cart") == {"cart": (4, "registry.local/cart:1")}, what="restored"
    )
    assert world.available("cart", 4)
    record = world.store.get("r1", "cart", "production")
    assert record is not None and record.phase == "rolled-back"
    assert record.verdict is not None
    assert (record.verdict["action"], record.verdict["why"]) == ("rollback", "scripted rollback at step 3")
    # the weight never reached 100: no step past the failed analysis ran
    assert [s for s, _ in world.step_events()] == [1, 2, 3]


def test_a_pause_requested_between_steps_holds_the_canary_and_resume_goes_on(world: World) -> None:
    world.deploy("feed", "registry.local/feed:1", 4)

    def sleep_and_ask_for_a_pause(seconds: float) -> None:  # a person runs `awo rollout pause` meanwhile
        world.slept.append(seconds)
        world.store.request("r1", "pause")

    held = world.executor(sleep=sleep_and_ask_for_a_pause).run(_task("canary", "feed", ref="2", steps=STEPS))

    assert held.status == "paused"
    assert held.detail == "paused by request at step 2"
    assert world.split("feed") == {
        "feed": (3, "registry.local/feed:1"),
        "feed-canary": (1, "registry.local/feed:2"),
    }
    assert world.store.status("r1").targets[0].phase == "paused"

    still = world.executor().run(_task("canary", "feed", ref="2", steps=STEPS))  # re-run without resume
    assert still.status == "paused" and still.actions == []

    world.store.request("r1", "resume")
    done = world.executor().run(_task("canary", "feed", ref="2", steps=STEPS))

    assert done.status == "succeeded", done.detail
    assert world.split("feed") == {
        "feed": (0, "registry.local/feed:1"),
        "feed-canary": (4, "registry.local/feed:2"),
    }
    assert world.slept == [60.0, 120.0]  # each pause waited once, none repeated
    assert [s for s, _ in world.step_events()] == [1, 2, 3, 4, 5]
    assert world.store.requested("r1") is None


def test_an_executor_killed_while_rolling_back_finishes_the_rollback_and_never_reships(world: World) -> None:
    world.deploy("rank", "registry.local/rank:1", 4)
    held = world.executor(ScriptedAnalyst(world, ["pause"])).run(
        _task("canary", "rank", ref="2", steps=STEPS)
    )
    assert held.status == "paused" and "rank-canary" in world.split("rank")
    record = world.store.get("r1", "rank", "production")
    assert record is not None
    # the analysis said roll back and the decision was recorded; the process died before any object changed
    world.store.update(record, "canary:rank", "rolling-back", "analysis: rollback", phase="rolling-back")
    analyst = ScriptedAnalyst(world, ["promote"])

    resumed = world.executor(analyst).run(_task("canary", "rank", ref="2", steps=STEPS))

    assert resumed.status == "failed" and "was rolled-back" in resumed.detail
    assert analyst.calls == []  # the rejected version is not analysed (or shipped) again
    world.cluster.wait_until(
        lambda: world.split("rank") == {"rank": (4, "registry.local/rank:1")}, what="restored"
    )
    assert world.store.get("r1", "rank", "production").phase == "rolled-back"  # type: ignore[union-attr]
    promoted = world.executor().run(_task("promote", "rank", ref="2"))
    assert promoted.status == "failed" and world.split("rank") == {"rank": (4, "registry.local/rank:1")}


def test_requests_reach_full_rollouts_before_each_deploy_or_promote(world: World) -> None:
    world.deploy("note", "registry.local/note:1", 2)
    world.deploy("feed", "registry.local/feed:1", 2)
    executor = world.executor()
    assert executor.run(_task("deploy", "note", ref="2")).status == "succeeded"
    world.store.request("r1", "pause")

    held = executor.run(_task("deploy", "feed", ref="2"))

    assert held.status == "paused" and held.detail == "paused by request before deploy:feed"
    assert world.split("feed") == {"feed": (2, "registry.local/feed:1")}
    world.store.request("r1", "resume")
    assert executor.run(_task("deploy", "feed", ref="2")).status == "succeeded"
    assert world.store.requested("r1") is None
    world.store.request("r1", "abort")

    aborted = executor.run(_task("promote", "note", ref="2"))

    assert (
        aborted.status == "failed" and aborted.detail == "aborted by request before promote:note; rolled back"
    )
    world.cluster.wait_until(lambda: world.split("note") == {"note": (2, "registry.local/note:1")})
    assert world.store.get("r1", "note", "production").phase == "aborted"  # type: ignore[union-attr]


def test_an_abort_request_rolls_the_canary_back(world: World) -> None:
    world.deploy("mail", "registry.local/mail:1", 2)

    def sleep_and_abort(seconds: float) -> None:
        world.store.request("r1", "abort")

    result = world.executor(sleep=sleep_and_abort).run(_task("canary", "mail", ref="2", steps=STEPS))

    assert result.status == "failed" and result.detail.startswith("aborted by request at step 2")
    world.cluster.wait_until(
        lambda: world.split("mail") == {"mail": (2, "registry.local/mail:1")}, what="aborted"
    )
    assert world.store.get("r1", "mail", "production").phase == "aborted"  # type: ignore[union-attr]


def test_blue_green_switches_the_selector_after_analysis_keeps_the_old_and_rolls_back(world: World) -> None:
    world.deploy("shop", "registry.local/shop:1", 2)
    analyst = ScriptedAnalyst(world, ["promote"])
    executor = world.executor(analyst)

    def selector() -> dict[str, str]:
        return dict(world.core.read_namespaced_service("shop", world.ns).spec.selector)

    def hash_of(name: str) -> str:
        dep = world.apps.read_namespaced_deployment(name, world.ns)
        sets = world.apps.list_namespaced_replica_set(world.ns, label_selector="app=shop").items
        owned = [rs for rs in sets if rs.metadata.owner_references[0].uid == dep.metadata.uid]
        return str(owned[0].metadata.labels["pod-template-hash"])

    result = executor.run(_task("canary", "shop", ref="2", strategy="blue-green", steps=[{"pause": "5m"}]))

    assert result.status == "succeeded", result.detail
    # at analysis time the preview ran at full size and the Service still selected the old pods only
    assert analyst.seen == [
        {"shop": (2, "registry.local/shop:1"), "shop-preview": (2, "registry.local/shop:2")}
    ]
    assert selector() == {"app": "shop", "pod-template-hash": hash_of("shop-preview")}
    assert world.split("shop") == {
        "shop": (2, "registry.local/shop:1"),
        "shop-preview": (2, "registry.local/shop:2"),
    }
    pods = world.core.list_namespaced_pod(
        world.ns, label_selector=",".join(f"{k}={v}" for k, v in selector().items())
    )
    assert {p.spec.containers[0].image for p in pods.items} == {"registry.local/shop:2"}
    service = world.core.read_namespaced_service("shop", world.ns)
    assert json.loads(service.metadata.annotations["awo.dev/previous-selector"]) == {"app": "shop"}

    promoted = executor.run(_task("promote", "shop", ref="2", strategy="blue-green"))
    assert promoted.status == "succeeded" and promoted.actions == []
    assert world.split("shop")["shop"] == (2, "registry.local/shop:1")  # kept scaled for a fast rollback

    back = executor.run(_task("rollback", "shop", to="previous"))

    assert back.status == "succeeded", back.detail
    assert selector() == {"app": "shop"}
    world.cluster.wait_until(
        lambda: world.split("shop") == {"shop": (2, "registry.local/shop:1")}, what="preview gone"
    )


def test_argo_rollouts_are_detected_by_discovery_once_the_crd_is_installed(
    world: World, k8s_cluster: K8sCluster
) -> None:
    from tests.k8s_cluster import install_rollouts_crd, remove_rollouts_crd

    assert world.executor().argo_rollouts_installed() is False
    install_rollouts_crd(k8s_cluster)
    try:
        assert world.executor().argo_rollouts_installed() is True
    finally:
        remove_rollouts_crd(k8s_cluster)
    assert world.executor().argo_rollouts_installed() is False


def test_with_the_argo_rollouts_crd_a_rollout_is_written_instead_of_a_canary_deployment(
    world: World, k8s_cluster: K8sCluster
) -> None:
    from tests.k8s_cluster import custom_resource_defect, install_rollouts_crd, remove_rollouts_crd

    defect = custom_resource_defect()
    if defect is not None:
        pytest.skip(defect)
    world.deploy("api", "registry.local/api:1", 4)
    install_rollouts_crd(k8s_cluster)
    try:
        custom = client.CustomObjectsApi(world.api)
        executor = world.executor(ScriptedAnalyst(world, []))

        first = executor.run(_task("canary", "api", ref="2", steps=STEPS))

        # Argo skips the steps of a Rollout's first revision: it is created at the running version and holds
        assert first.status == "paused" and "created at the running version" in first.detail
        ro: Any = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", world.ns, "rollouts", "api")
        assert ro["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/api:1"
        assert executor.run(_task("canary", "api", ref="2", steps=STEPS)).status == "paused"  # until resumed
        world.store.request("r1", "resume")

        result = executor.run(_task("canary", "api", ref="2", steps=STEPS))

        assert result.status == "succeeded", result.detail
        ro = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", world.ns, "rollouts", "api")
        assert ro["spec"]["replicas"] == 4
        assert ro["spec"]["selector"] == {"matchLabels": {"app": "api"}}
        assert ro["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/api:2"
        assert ro["spec"]["strategy"]["canary"]["steps"] == [
            {"setWeight": 25},
            {"pause": {"duration": "1m"}},
            {"setWeight": 50},
            {"pause": {"duration": "2m"}},
            {"setWeight": 100},
        ]
        assert ro["metadata"]["annotations"]["awo.dev/rollout-id"] == "r1"
        assert world.split("api") == {"api": (4, "registry.local/api:1")}  # no canary Deployment
        assert executor.run(_task("canary", "api", ref="2", steps=STEPS)).actions == []

        world.store.request("r1", "pause")  # `awo rollout pause`: spec.paused, as Argo's kubectl plugin
        assert executor.run(_task("canary", "api", ref="2", steps=STEPS)).status == "paused"
        ro = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", world.ns, "rollouts", "api")
        assert ro["spec"]["paused"] is True
        world.store.request("r1", "resume")
        assert executor.run(_task("canary", "api", ref="2", steps=STEPS)).status == "succeeded"
        ro = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", world.ns, "rollouts", "api")
        assert ro["spec"]["paused"] is False

        assert executor.run(_task("promote", "api", ref="2")).status == "succeeded"
        ro = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", world.ns, "rollouts", "api")
        assert ro["status"]["promoteFull"] is True

        assert executor.run(_task("rollback", "api", to="previous")).status == "succeeded"
        ro = custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", world.ns, "rollouts", "api")
        assert ro["status"]["abort"] is True
    finally:
        remove_rollouts_crd(k8s_cluster)


def test_restart_scale_out_and_flag_off_act_once(world: World) -> None:
    world.deploy("jobs", "registry.local/jobs:1", 1)
    executor = world.executor()

    restarted = executor.run(_task("restart", "jobs"))
    assert restarted.status == "succeeded", restarted.detail
    dep = world.apps.read_namespaced_deployment("jobs", world.ns)
    stamp = dep.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]
    assert executor.run(_task("restart", "jobs")).actions == []
    dep = world.apps.read_namespaced_deployment("jobs", world.ns)
    assert dep.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"] == stamp

    scaled = executor.run(_task("scale_out", "jobs", replicas=3))
    assert scaled.status == "succeeded" and scaled.actions == ["scale deployment jobs from 1 to 3"]
    assert world.available("jobs", 3)
    assert executor.run(_task("scale_out", "jobs", replicas=3)).actions == []
    assert executor.run(_task("scale_out", "jobs", replicas="lots")).status == "failed"

    off = executor.run(_task("flag_off", "jobs", flag="new-checkout"))
    assert off.actions == ["create configmap jobs-flags with new-checkout=false"]
    world.core.patch_namespaced_config_map(
        "jobs-flags", world.ns, {"data": {"new-checkout": "true", "x": "1"}}
    )
    again = world.executor(rollout_id="r2").run(_task("flag_off", "jobs", flag="new-checkout"))
    assert again.actions == ["set new-checkout=false in configmap jobs-flags"]
    assert world.core.read_namespaced_config_map("jobs-flags", world.ns).data == {
        "new-checkout": "false",
        "x": "1",
    }


def test_errors_of_the_world_fail_the_task_with_a_line_naming_the_object(
    world: World, tmp_path: Path
) -> None:
    missing = world.executor().run(_task("deploy", "ghost", ref="2"))
    assert missing.status == "failed"
    assert missing.detail == f"deployment ghost in namespace {world.ns}: not found"

    unreachable_api = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    unreachable_api.configuration.retries = 0
    executor = KubernetesExecutor(unreachable_api, "prod", "r1", RolloutStore(tmp_path / "x.db"))
    down = executor.run(_task("deploy", "web", ref="2"))
    assert down.status == "failed"
    assert down.detail.startswith("deployment web in namespace prod: API server unreachable")
    # kinds that do not touch the cluster go to the fallback (a dry run by default)
    assert executor.run(Task(id="notify", kind="notify", params={"message": "hi"})).status == "succeeded"


def _events_db(db: Path) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT kind, step FROM events ORDER BY seq").fetchall()
        except sqlite3.OperationalError as exc:  # the executor has created the file, not yet its tables
            if "no such table" in str(exc):
                return []
            raise


def test_a_killed_executor_resumes_the_canary_at_the_recorded_step(
    world: World, k8s_cluster: K8sCluster, tmp_path: Path
) -> None:
    world.deploy("search", "registry.local/search:1", 4)
    db = tmp_path / "rollouts.db"
    steps = [{"set_weight": 25}, {"pause": "1s"}, {"set_weight": 50}, {"pause": "10m"}, {"set_weight": 100}]
    task = _task("canary", "search", ref="2", steps=steps)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        str(ROOT / "tests" / "kube_helpers.py"),
        str(k8s_cluster),
        world.ns,
        str(db),
        "r1",
    ]
    proc = subprocess.Popen([*args, task.model_dump_json()], cwd=ROOT, env=env)
    try:
        # after step 3 (weight 50) the process sits in the 10-minute pause: kill it there
        k8s_cluster.wait_until(lambda: ("step", 3) in _events_db(db), timeout_s=60, what="step 3 recorded")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert world.split("search") == {
        "search": (2, "registry.local/search:1"),
        "search-canary": (2, "registry.local/search:2"),
    }

    store = RolloutStore(db)
    resumed = KubernetesExecutor(
        world.api, world.ns, "r1", store, poll_seconds=0.1, timeout_seconds=30, sleep=world.slept.append
    ).run(task)

    assert resumed.status == "succeeded", resumed.detail
    assert world.slept == [600.0]  # only the interrupted pause waits again; the 1 s pause ran before the kill
    assert resumed.actions == ["scale deployment search-canary to 4", "scale deployment search to 0"]
    kinds = [(e.kind, e.step) for e in store.events("r1")]
    assert kinds == [
        ("started", 0),
        ("step", 1),
        ("step", 2),
        ("step", 3),
        ("resumed", 3),
        ("step", 4),
        ("step", 5),
    ]
    assert world.split("search") == {
        "search": (0, "registry.local/search:1"),
        "search-canary": (4, "registry.local/search:2"),
    }
    assert world.available("search-canary", 4)
