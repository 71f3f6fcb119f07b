"""The real Kubernetes control plane the rollout executor's tests run against: with the fake kubelet a
Deployment becomes available, and an image patch rolls over to a second ReplicaSet (revision 2) for real."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubernetes import client

if TYPE_CHECKING:
    from tests.k8s_cluster import FakeKubelet, K8sCluster

pytest_plugins = ["tests.k8s_cluster"]  # k8s_cluster, k8s_namespace, fake_kubelet


def _deployment(name: str, image: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image=image)]),
            ),
        ),
    )


def _image_patch(image: str) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}


def _available(apps: client.AppsV1Api, ns: str, name: str, replicas: int, image: str) -> Any:
    dep = apps.read_namespaced_deployment(name, ns)
    st = dep.status
    done = (
        dep.spec.template.spec.containers[0].image == image
        and st.observed_generation == dep.metadata.generation
        and st.updated_replicas == replicas
        and st.available_replicas == replicas
        and st.ready_replicas == replicas
        and (st.replicas or 0) == replicas
        and not st.unavailable_replicas
    )
    return dep if done else None


def test_deployment_becomes_available_and_an_image_patch_rolls_over(
    k8s_cluster: K8sCluster, k8s_namespace: str, fake_kubelet: FakeKubelet
) -> None:
    ns, name = k8s_namespace, "web"
    with k8s_cluster.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        apps.create_namespaced_deployment(ns, _deployment(name, "registry.local/web:1", replicas=2))
        k8s_cluster.wait_until(
            lambda: _available(apps, ns, name, 2, "registry.local/web:1"), what="deployment available (v1)"
        )
        pods = core.list_namespaced_pod(ns, label_selector="app=web").items
        assert len(pods) == 2
        assert {p.spec.node_name for p in pods} == {fake_kubelet.node_name}
        assert all(p.status.phase == "Running" for p in pods)

        apps.patch_namespaced_deployment(
            name,
            ns,
            {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "app", "image": "registry.local/web:2"}]}}
                }
            },
        )
        dep = k8s_cluster.wait_until(
            lambda: _available(apps, ns, name, 2, "registry.local/web:2"), what="deployment rolled over (v2)"
        )
        assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "2"

        replica_sets = apps.list_namespaced_replica_set(ns, label_selector="app=web").items
        by_revision = {
            rs.metadata.annotations["deployment.kubernetes.io/revision"]: rs for rs in replica_sets
        }
        assert set(by_revision) == {"1", "2"}
        assert by_revision["1"].spec.template.spec.containers[0].image == "registry.local/web:1"
        assert by_revision["2"].spec.template.spec.containers[0].image == "registry.local/web:2"
        assert by_revision["1"].spec.replicas == 0
        assert by_revision["2"].status.available_replicas == 2

        # The old pods are gone (terminated and force-deleted by the fake kubelet); the new ones run.
        def only_new_pods() -> list[Any]:
            pods = core.list_namespaced_pod(ns, label_selector="app=web").items
            images = [p.spec.containers[0].image for p in pods]
            return pods if images == ["registry.local/web:2"] * 2 else []

        pods = k8s_cluster.wait_until(only_new_pods, what="old pods deleted")
        assert all(p.status.phase == "Running" for p in pods)
    assert not fake_kubelet.errors


def test_a_rollout_to_a_crashing_image_stalls_past_its_deadline_and_a_rollback_recovers(
    k8s_cluster: K8sCluster, k8s_namespace: str, fake_kubelet: FakeKubelet
) -> None:
    ns, name = k8s_namespace, "api"
    fake_kubelet.fail_image("registry.local/api:bad")
    with k8s_cluster.api_client() as api:
        apps = client.AppsV1Api(api)
        body = _deployment(name, "registry.local/api:1", replicas=2)
        body.spec.progress_deadline_seconds = 2
        apps.create_namespaced_deployment(ns, body)
        k8s_cluster.wait_until(
            lambda: _available(apps, ns, name, 2, "registry.local/api:1"), what="v1 available"
        )

        apps.patch_namespaced_deployment(name, ns, _image_patch("registry.local/api:bad"))

        def deadline_exceeded() -> Any:
            dep = apps.read_namespaced_deployment(name, ns)
            progressing = [c for c in dep.status.conditions or [] if c.type == "Progressing"]
            stalled = progressing and progressing[0].reason == "ProgressDeadlineExceeded"
            return dep if stalled else None

        dep = k8s_cluster.wait_until(deadline_exceeded, what="ProgressDeadlineExceeded")
        # The old pods still serve: max unavailable 25% of 2 rounds down to 0.
        assert dep.status.available_replicas == 2
        assert (dep.status.unavailable_replicas or 0) >= 1

        apps.patch_namespaced_deployment(name, ns, _image_patch("registry.local/api:1"))
        dep = k8s_cluster.wait_until(
            lambda: _available(apps, ns, name, 2, "registry.local/api:1"), what="rolled back"
        )
        assert dep.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    assert not fake_kubelet.errors
