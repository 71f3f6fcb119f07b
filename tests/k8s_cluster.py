"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager (Kubernetes
1.20, built from Debian's source package by `scripts/k8s.sh build` into $AWO_CACHE_DIR or ~/.cache/awo),
with no container runtime and no nodes. Deployments, ReplicaSets, rollouts, scaling and rollbacks are the
real controllers'; a small fake kubelet (`FakeKubelet`) plays scheduler and node so pods become Running and
Ready and Deployments become available.

Use it from a test module with `pytest_plugins = ["tests.k8s_cluster"]` (import its classes only under
`if TYPE_CHECKING:`, or pytest cannot rewrite the plugin's asserts), then ask for

- `k8s_cluster` (session): a `K8sCluster`; `cluster.kubeconfig` (also `str(cluster)` / `os.fspath(cluster)`)
  is the kubeconfig path for `kubernetes.config.load_kube_config(config_file=...)`, `cluster.api_client()`
  a fresh `kubernetes.client.ApiClient`, `cluster.namespace("prefix")` a new namespace's name,
  `cluster.wait_until(predicate, timeout_s, what=...)` a poll that fails the test on timeout;
- `k8s_namespace` (function): a fresh namespace for the test;
- `fake_kubelet` (function): a started `FakeKubelet` that binds, starts and readies every pod, and finishes
  terminating pods at once; `fake_kubelet.fail_image("img:bad")` makes pods of that image crash-loop (never
  Ready), to drive a rollout that does not progress.

Each pytest process (each xdist worker) starts its own cluster: about 6 s and ~500 MB.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

K8S_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "k8s.sh"
CACHE_NOTE = "once per machine: about 7 min on 2 cores, cached in $AWO_CACHE_DIR or ~/.cache/awo"


def pytest_configure(config: pytest.Config) -> None:
    # Only if the apiserver's self-signed certificate does not verify does the kubeconfig skip TLS checks.
    config.addinivalue_line("filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning")


@dataclass
class K8sCluster:
    kubeconfig: Path
    state_dir: Path

    def __fspath__(self) -> str:
        return str(self.kubeconfig)

    def __str__(self) -> str:
        return str(self.kubeconfig)

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def namespace(self, prefix: str = "t") -> str:
        """Create a namespace with a unique name and return the name."""
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
            )
        return name

    @staticmethod
    def wait_until(
        predicate: Any, timeout_s: float = 20.0, poll_s: float = 0.1, what: str = "condition"
    ) -> Any:
        """Poll `predicate()` until it returns something truthy; return that, or fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    """Start etcd + kube-apiserver + kube-controller-manager once per test process; stop them after."""
    pytest.importorskip("kubernetes")
    found = subprocess.run([str(K8S_SCRIPT), "check"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(
            f"Kubernetes API server not available: {'; '.join(found.stderr.strip().splitlines())}; "
            f"run: scripts/k8s.sh build ({CACHE_NOTE})"
        )
    state_dir = tmp_path_factory.mktemp("k8s")
    started = subprocess.run(
        [str(K8S_SCRIPT), "start", str(state_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "AWO_K8S_OWNER_PID": str(os.getpid())},  # stopped even if pytest is killed
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"scripts/k8s.sh start failed:\n{started.stderr[-3000:]}")
        yield K8sCluster(kubeconfig=Path(started.stdout.strip().splitlines()[-1]), state_dir=state_dir)
    finally:
        subprocess.run([str(K8S_SCRIPT), "stop", str(state_dir)], capture_output=True)


@pytest.fixture
def k8s_namespace(k8s_cluster: K8sCluster) -> str:
    return k8s_cluster.namespace()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeKubelet:
    """Scheduler and node in one polling thread: it creates a Node, binds every unscheduled pod to it, sets
    the status of its pods to Running with Ready conditions and container statuses, and force-deletes its
    pods once they are terminating (there is no container to stop). Pods bound to other nodes are left alone.
    `namespaces` limits it to those namespaces (all when empty)."""

    cluster: K8sCluster
    node_name: str = field(default_factory=lambda: f"fake-node-{uuid.uuid4().hex[:6]}")
    namespaces: tuple[str, ...] = ()
    poll_s: float = 0.1
    failing_images: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ip: int = 0

    def fail_image(self, image: str) -> None:
        """Pods with a container of this image crash-loop: Running, never Ready."""
        self.failing_images.add(image)

    def start(self) -> FakeKubelet:
        from kubernetes import client

        self._api = self.cluster.api_client()
        self._core = client.CoreV1Api(self._api)
        node = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=self.node_name, labels={"kubernetes.io/hostname": self.node_name}
            ),
            status=client.V1NodeStatus(
                conditions=[
                    client.V1NodeCondition(type="Ready", status="True", reason="KubeletReady", message="fake")
                ],
                capacity={"cpu": "64", "memory": "256Gi", "pods": "1000"},
                allocatable={"cpu": "64", "memory": "256Gi", "pods": "1000"},
            ),
        )
        self._core.create_node(node)
        self._thread = threading.Thread(target=self._run, name=f"fake-kubelet-{self.node_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._api.close()

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # a conflict or a pod that went away meanwhile: next round
                self.errors.append(repr(exc)[:500])
                del self.errors[:-50]
            self._stop.wait(self.poll_s)

    def _pods(self) -> list[Any]:
        if not self.namespaces:
            return list(self._core.list_pod_for_all_namespaces().items)
        return [p for ns in self.namespaces for p in self._core.list_namespaced_pod(ns).items]

    def sync(self) -> None:
        """One round over the pods (the thread calls it every `poll_s`)."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        for pod in self._pods():
            meta, spec = pod.metadata, pod.spec
            try:
                if spec.node_name is None and meta.deletion_timestamp is None:
                    binding = client.V1Binding(
                        metadata=client.V1ObjectMeta(name=meta.name),
                        target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.node_name),
                    )
                    # The server answers a Status, which the client cannot read as a V1Binding.
                    self._core.create_namespaced_binding(meta.namespace, binding, _preload_content=False)
                    continue
                if spec.node_name != self.node_name:
                    continue
                if meta.deletion_timestamp is not None:
                    self._core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0)
                elif pod.status.phase != "Running":
                    self._core.patch_namespaced_pod_status(meta.name, meta.namespace, self._running(pod))
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise

    def _running(self, pod: Any) -> dict[str, Any]:
        now = _now()
        failing = any(c.image in self.failing_images for c in pod.spec.containers)
        ready = "False" if failing else "True"
        self._ip += 1
        statuses = []
        for c in pod.spec.containers:
            if c.image in self.failing_images:
                state: dict[str, Any] = {"waiting": {"reason": "CrashLoopBackOff", "message": "fake failure"}}
                restarts = 3
            else:
                state = {"running": {"startedAt": now}}
                restarts = 0
            statuses.append(
                {
                    "name": c.name,
                    "image": c.image,
                    "imageID": f"fake://{c.image}",
                    "containerID": f"fake://{uuid.uuid4().hex}",
                    "ready": c.image not in self.failing_images,
                    "started": c.image not in self.failing_images,
                    "restartCount": restarts,
                    "state": state,
                }
            )
        conditions = [
            {"type": t, "status": s, "lastTransitionTime": now}
            for t, s in (
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", ready),
                ("Ready", ready),
            )
        ]
        return {
            "status": {
                "phase": "Running",
                "hostIP": "10.1.0.1",
                "podIP": f"10.2.{self._ip // 250 % 250}.{self._ip % 250 + 1}",
                "startTime": now,
                "conditions": conditions,
                "containerStatuses": statuses,
            }
        }


@pytest.fixture
def fake_kubelet(k8s_cluster: K8sCluster) -> Iterator[FakeKubelet]:
    kubelet = FakeKubelet(k8s_cluster).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


__all__ = ["FakeKubelet", "K8sCluster", "fake_kubelet", "k8s_cluster", "k8s_namespace"]


# Argo Rollouts' CRD, cut down to what the API server needs: the group, the names, the version with an
# open schema (x-kubernetes-preserve-unknown-fields) and the status and scale subresources Argo's
# manifest (manifests/crds/rollout-crd.yaml) declares. The official manifest cannot be downloaded here.
ROLLOUTS_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "rollouts.argoproj.io"},
    "spec": {
        "group": "argoproj.io",
        "names": {
            "kind": "Rollout",
            "listKind": "RolloutList",
            "plural": "rollouts",
            "singular": "rollout",
            "shortNames": ["ro"],
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.HPAReplicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
            }
        ],
    },
}


def install_rollouts_crd(cluster: K8sCluster, timeout_s: float = 30.0) -> None:
    """Install the Argo Rollouts CRD and wait until discovery serves argoproj.io/v1alpha1 rollouts."""
    from kubernetes import client

    with cluster.api_client() as api:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(ROLLOUTS_CRD)  # type: ignore[arg-type]
        cluster.wait_until(lambda: _serves_rollouts(api), timeout_s, what="rollouts.argoproj.io served")


def remove_rollouts_crd(cluster: K8sCluster, timeout_s: float = 30.0) -> None:
    """Delete the CRD (it is cluster-wide: other tests must not see it) and wait until it is gone."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    with cluster.api_client() as api:
        try:
            client.ApiextensionsV1Api(api).delete_custom_resource_definition("rollouts.argoproj.io")
        except ApiException as exc:
            if exc.status != 404:
                raise
        cluster.wait_until(lambda: not _serves_rollouts(api), timeout_s, what="rollouts.argoproj.io removed")


def _serves_rollouts(api: Any) -> bool:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        found = client.CustomObjectsApi(api).get_api_resources("argoproj.io", "v1alpha1")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(r.name == "rollouts" for r in found.resources or [])


__all__ += ["install_rollouts_crd", "remove_rollouts_crd"]


def custom_resource_defect() -> str | None:
    """Why the built kube-apiserver cannot store custom objects, or None. Kubernetes 1.20 vendors
    modern-go/reflect2 v1.0.1, whose map iteration breaks under Go >= 1.18 (modern-go/reflect2#26, fixed in
    v1.0.2): the apiserver dies with SIGSEGV decoding the first custom object, taking the session's cluster
    with it. A CRD itself installs fine."""
    k8s = Path(os.environ.get("AWO_CACHE_DIR", Path.home() / ".cache" / "awo")) / "k8s"
    modules = k8s / "gopath" / "src" / "k8s.io" / "kubernetes" / "vendor" / "modules.txt"
    try:
        vendored = "github.com/modern-go/reflect2 v1.0.1 " in modules.read_text(encoding="utf-8")
        built = subprocess.run(
            ["go", "version", str(k8s / "bin" / "kube-apiserver")], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"go1\.(\d+)", built)
    if vendored and found is not None and int(found.group(1)) >= 18:
        return (
            f"kube-apiserver built with go1.{found.group(1)} and reflect2 v1.0.1 crashes on any custom "
            "object "
            "(modern-go/reflect2#26): scripts/k8s.sh build must vendor reflect2 v1.0.2 or use Go <= 1.17"
        )
    return None


__all__ += ["custom_resource_defect"]
