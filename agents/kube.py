"""`KubernetesExecutor`: a plan's deploy, canary, promote and rollback tasks carried out on a cluster with the
official client (full, canary by replica ratio or an Argo Rollouts `Rollout`, blue-green by Service selector),
idempotent and resumable from the rollout state in the data root; `executor_from_settings` picks the executor.

Design, in the order a rollout meets it (the decisions behind the code):

- Objects: the Deployment named like the task's service in the executor's namespace; the container named like
  the service, else the first. The new image is `params["image"]`, else the current image with its tag (or
  digest) replaced by the ref, as Flux's and Argo CD's image updaters write it.
- Reconcile, as a controller: every write is preceded by a read and skipped when the object already is as
  wanted, and followed by a read back. Each step is recorded (agents/rollout_state.py: phase, step index,
  previous image/replicas/selector, events) in one transaction after its write, and the objects carry
  `awo.dev/rollout-id`, `awo.dev/step`, `awo.dev/previous-image`, `awo.dev/previous-replicas` (and
  `awo.dev/previous-selector` on a Service). A resumed executor re-applies the last recorded step (a no-op
  when it held) and goes on from there: it never starts over, and never leaves two versions at weights
  no step asked for.
- full / rolling / recreate (`deploy`, and `promote` without a canary): patch the image and wait for the new
  ReplicaSet: observedGeneration caught up, updated = available = replicas; `ProgressDeadlineExceeded` or
  the timeout fails the task (a re-plan then rolls back).
- canary, Deployment mode (the Kubernetes docs' canary pattern): `<service>-canary`, a copy of the stable
  Deployment with the new image and the pod label `track: canary` (its selector: the stable one plus that
  label), behind the same Service; `set_weight` w splits the recorded total as canary = ceil(total*w/100),
  stable = total - canary (at least 1 while w < 100). At a `pause` step the analyst judges (promote and
  continue go on; pause holds: status `paused`; rollback: canary deleted, stable replicas restored, task
  failed with the verdict's why); without an analyst the pause just waits its duration (`sleep`).
  `promote`: stable image <- new, stable back to the total, canary deleted.
- canary, Argo mode: when discovery lists `rollouts` in `argoproj.io/v1alpha1`, a `Rollout` named like the
  service is created or patched (spec.replicas, selector, template with the new image, strategy.canary.steps
  as `setWeight` / `pause: {duration}`) and Argo's controller carries the steps out. Promote and abort use the
  fields `kubectl argo rollouts promote --full` and `abort` write on the status subresource:
  `status.promoteFull: true` and `status.abort: true`; a requested pause sets `spec.paused: true`. The stable
  Deployment is left as it is (scale it down as Argo's migration guide says).
- blue-green: the Service is first pinned to the stable pods (`pod-template-hash` of the stable Deployment's
  current ReplicaSet, a label the controller puts on every pod, so the stable template never changes), then
  `<service>-preview` (label `track: canary`: the analysis' track of the new version) runs the new image at
  full replicas, the analyst judges, and the selector switches to the preview ReplicaSet's hash. The old
  Deployment stays scaled for a fast rollback, which puts the recorded selector back and deletes the preview.
- Between steps the executor reads the request a person left with `awo rollout pause|resume|abort`
  (RolloutStore.request): pause -> status `paused` (phase paused); resume -> go on (past an analysis hold);
  abort -> roll back, phase aborted, task failed.
- Errors of the world (no such Deployment or container, API unreachable, forbidden, a stalled rollout)
  give a failed `TaskResult` whose one-line detail names the object; bugs propagate.
- analyse / test / watch / block / notify / record_incident go to the fallback executor (a DryRunExecutor by
  default). Cloud clusters (EKS, AKS, GKE) are reached through their kubeconfig's exec credential plugins.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agents.executor import DryRunExecutor, Executor, ResultStatus, TaskResult
from agents.planner import Task
from agents.policy import duration_seconds
from agents.rollout_state import RolloutRecord, RolloutStore
from features.errors import AwoError, BadConfig

if TYPE_CHECKING:
    from agents.judge import RunVerdict
    from features.settings import Settings

# What a real rollout cannot pretend to have done when nothing is configured to do it (skipped, not passed)
NOT_CARRIED_OUT = {
    "test": "not carried out here: the suites run in CI (awo decide's test plan), not on the cluster",
    "watch": "not watched: no metrics source is configured (AWO_PROMETHEUS_URL)",
}
RESTORING = {"rolled-back": "rolling-back", "aborted": "aborting"}  # final phase -> while restoring
FINISHED_BY = {v: k for k, v in RESTORING.items()}
KUBE_KINDS = frozenset({"deploy", "canary", "promote", "rollback", "restart", "scale_out", "flag_off"})
ANNOTATION = "awo.dev"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"  # what `kubectl rollout restart` sets
ARGO_GROUP, ARGO_VERSION, ARGO_PLURAL = "argoproj.io", "v1alpha1", "rollouts"
TRACK = "track"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class CanaryAnalyst(Protocol):
    """Judges the canary against the stable version at a pause step (agents/monitor.py implements it)."""

    def analyse(
        self, service: str, environment: str, stable_ref: str, canary_ref: str, step: int
    ) -> RunVerdict: ...


class KubeFailure(AwoError):
    """A task that cannot be carried out on the cluster; the message is the task's one-line detail."""


# --- pure decisions ---------------------------------------------------------------------------------------


def replica_split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas for `weight` percent of traffic by replica ratio: the canary rounds up,
    and the stable keeps at least one pod until the weight is 100."""
    if not 0 <= weight <= 100:
        raise KubeFailure(f"set_weight {weight}: expected 0..100")
    canary = math.ceil(total * weight / 100)
    stable = total - canary
    if weight < 100:
        stable = max(stable, 1)
    return stable, canary


def image_for_ref(image: str, ref: str) -> str:
    """`image` with its tag (or digest) replaced by `ref`: registry.local:5000/web:1 + v2 ->
    registry.local:5000/web:v2."""
    if not _TAG.match(ref):
        raise KubeFailure(f"ref {ref!r} is not a valid image tag (give the task an `image` param)")
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}:{ref}"


def tag_of(image: str | None) -> str:
    if not image:
        return ""
    name = image.split("@", 1)
    if len(name) == 2:
        return name[1]
    slash, colon = image.rfind("/"), image.rfind(":")
    return image[colon + 1 :] if colon > slash else "latest"


def last_weight(steps: list[dict[str, Any]], done: int) -> int | None:
    """The weight the first `done` steps left the canary at (None: no weight step yet)."""
    weights = [int(s["set_weight"]) for s in steps[:done] if "set_weight" in s]
    return weights[-1] if weights else None


def argo_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's steps in Argo Rollouts' field names."""
    out: list[dict[str, Any]] = []
    for step in steps:
        if "set_weight" in step:
            out.append({"setWeight": int(step["set_weight"])})
        else:
            out.append({"pause": {"duration": str(step["pause"])}})
    return out


def verdict_data(verdict: Any) -> dict[str, Any]:
    """A verdict as JSON-able data for the state and the audit (dataclass fields, intervals included)."""
    from agents.judge import RunVerdict, run_evidence

    if isinstance(verdict, RunVerdict):
        return run_evidence(verdict)  # strict JSON: an infinite effect is written "inf"
    if dataclasses.is_dataclass(verdict) and not isinstance(verdict, type):
        return dataclasses.asdict(verdict)
    return {"action": getattr(verdict, "action", None), "why": getattr(verdict, "why", "")}


@dataclass
class _Outcome:
    status: ResultStatus
    detail: str
    actions: list[str]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubernetesExecutor:
    """Carries out deploy/canary/promote/rollback/restart/scale_out/flag_off tasks on one namespace of a
    cluster; other kinds go to `fallback`. `sleep` waits the plan's pause steps (tests pass a fake);
    `on_progress` hears one line per poll while a Deployment rolls."""

    name = "kubernetes"

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        rollout_id: str,
        state: RolloutStore,
        analyst: CanaryAnalyst | None = None,
        poll_seconds: float = 2.0,
        timeout_seconds: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        fallback: Executor | None = None,
        on_progress: Callable[[str], None] | None = None,
        namespaces: Mapping[str, str] | None = None,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.default_namespace = namespace
        self.namespaces = dict(namespaces or {})  # environment -> namespace (others: `namespace`)
        self.namespace = namespace  # the namespace of the task being run
        self.rollout_id = rollout_id
        self.state = state
        self.analyst = analyst
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.sleep = sleep
        self.fallback: Executor = fallback if fallback is not None else DryRunExecutor()
        self._dry_fallback = fallback is None  # then tests and watches are not carried out: say so
        self.on_progress = on_progress
        self.verdicts: dict[str, list[Any]] = {}  # task id -> the analyst's verdicts, in order
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._argo: bool | None = None

    # --- the protocol -----------------------------------------------------------------------------------

    def run(self, task: Task) -> TaskResult:
        if task.kind in NOT_CARRIED_OUT and self._dry_fallback:
            return TaskResult(task_id=task.id, status="skipped", detail=NOT_CARRIED_OUT[task.kind])
        if task.kind not in KUBE_KINDS:
            return self.fallback.run(task)
        if not task.service:
            return TaskResult(
                task_id=task.id, status="failed", detail=f"{task.kind} task {task.id}: no service"
            )
        actions: list[str] = []
        self.namespace = self.namespaces.get(task.environment or "", self.default_namespace)
        try:
            self._wait_for_slot(task, actions)
            outcome = getattr(self, f"_{task.kind}")(task, actions)
        except KubeFailure as exc:
            return TaskResult(task_id=task.id, status="failed", detail=str(exc), actions=actions)
        return TaskResult(task_id=task.id, status=outcome.status, detail=outcome.detail, actions=actions)

    def _wait_for_slot(self, task: Task, actions: list[str]) -> None:
        """A production step planned for a deploy slot (`not_before`, the policy's window away from the
        traffic peak) starts no earlier than that."""
        if "not_before" not in task.params:
            return
        try:
            slot = datetime.fromisoformat(str(task.params["not_before"]))
        except ValueError:
            raise KubeFailure(f"{task.id}: not_before {task.params['not_before']!r} is not a time") from None
        if slot.tzinfo is None:
            slot = slot.replace(tzinfo=UTC)
        wait = (slot - datetime.now(UTC)).total_seconds()
        if wait > 0:
            actions.append(f"wait until {slot.isoformat()} (the policy's deploy slot)")
            self.sleep(wait)

    # --- API calls: every failure of the world becomes a KubeFailure naming the object --------------------

    def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kw: Any
    ) -> Any:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kw)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            reason = {401: "unauthorized", 403: "forbidden", 404: "not found", 409: "conflict"}.get(
                exc.status or 0, f"HTTP {exc.status} {exc.reason}"
            )
            raise KubeFailure(f"{what} in namespace {self.namespace}: {reason}") from exc
        except (HTTPError, OSError) as exc:
            raise KubeFailure(
                f"{what} in namespace {self.namespace}: API server unreachable ({type(exc).__name__})"
            ) from exc

    def _deployment(self, name: str, missing_ok: bool = False) -> Any:
        return self._call(
            f"deployment {name}",
            self._apps.read_namespaced_deployment,
            name,
            self.namespace,
            missing_ok=missing_ok,
        )

    def _patch_deployment(self, name: str, body: dict[str, Any]) -> Any:
        self._call(f"deployment {name}", self._apps.patch_namespaced_deployment, name, self.namespace, body)
        return self._deployment(name)

    def _delete_deployment(self, name: str) -> bool:
        from kubernetes import client

        gone = self._call(
            f"deployment {name}",
            self._apps.delete_namespaced_deployment,
            name,
            self.namespace,
            body=client.V1DeleteOptions(propagation_policy="Foreground"),
            missing_ok=True,
        )
        return gone is not None

    def _service(self, name: str) -> Any:
        return self._call(f"service {name}", self._core.read_namespaced_service, name, self.namespace)

    @staticmethod
    def _container(dep: Any, service: str) -> Any:
        containers = dep.spec.template.spec.containers or []
        for c in containers:
            if c.name == service:
                return c
        if not containers:
            raise KubeFailure(f"deployment {dep.metadata.name}: no container")
        return containers[0]

    def _target_image(self, task: Task, current: str, record: RolloutRecord | None) -> str:
        if record is not None and record.canary_image and record.phase not in (*RESTORING, *FINISHED_BY):
            return record.canary_image
        if task.params.get("image"):
            return str(task.params["image"])
        if task.params.get("ref") is None:
            raise KubeFailure(f"{task.kind} task {task.id}: no ref or image param")
        return image_for_ref(current, str(task.params["ref"]))

    def _annotations(self, step: int, record: RolloutRecord | None) -> dict[str, str]:
        notes = {f"{ANNOTATION}/rollout-id": self.rollout_id, f"{ANNOTATION}/step": str(step)}
        if record is not None and record.previous_image:
            notes[f"{ANNOTATION}/previous-image"] = record.previous_image
        if record is not None and record.previous_replicas is not None:
            notes[f"{ANNOTATION}/previous-replicas"] = str(record.previous_replicas)
        return notes

    def _progress(self, line: str) -> None:
        if self.on_progress is not None:
            self.on_progress(line)

    def _wait_available(self, name: str, replicas: int, image: str | None, container: str) -> Any:
        """Until the Deployment's new ReplicaSet is available at `replicas` (and runs `image`)."""
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            dep = self._deployment(name)
            st = dep.status
            if image is not None and self._container(dep, container).image != image:
                raise KubeFailure(f"deployment {name}: image changed under the rollout (not {image})")
            observed = (st.observed_generation or 0) >= (dep.metadata.generation or 0)
            if observed:
                for cond in st.conditions or []:
                    if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                        raise KubeFailure(
                            f"deployment {name}: progress deadline exceeded "
                            f"({st.available_replicas or 0}/{replicas} available, "
                            f"{st.updated_replicas or 0} updated): {cond.message}"
                        )
            updated, available = st.updated_replicas or 0, st.available_replicas or 0
            self._progress(f"{name}: {updated}/{replicas} updated, {available} available")
            if (
                observed
                and updated == replicas
                and available == replicas
                and (st.replicas or 0) == replicas
                and not st.unavailable_replicas
            ):
                return dep
            if time.monotonic() > deadline:
                raise KubeFailure(
                    f"deployment {name}: not available after {self.timeout_seconds:.0f} s "
                    f"({available}/{replicas} available, {updated} updated)"
                )
            time.sleep(self.poll_seconds)

    def _check_request(self, task: Task, record: RolloutRecord) -> _Outcome | None:
        """Act on what a person asked for between steps: pause holds, abort rolls back."""
        requested = self.state.requested(self.rollout_id)
        if requested == "pause":
            if record.phase != "paused":
                self.state.update(
                    record, task.id, "paused", "paused by request", phase="paused", hold="request"
                )
            return _Outcome("paused", f"paused by request at step {record.step}", [])
        if requested == "abort":
            actions: list[str] = []
            self._restore(task, record, actions, phase="aborted", why="aborted by request")
            return _Outcome("failed", f"aborted by request at step {record.step}; rolled back", actions)
        return None

    # --- full / rolling ---------------------------------------------------------------------------------

    def _ended(self, task: Task, record: RolloutRecord | None, actions: list[str]) -> _Outcome | None:
        """A target this rollout already rolled back (or aborted) never moves forward again under the same
        rollout id; one killed while restoring finishes the restore first."""
        if record is None or record.phase not in (*RESTORING, *FINISHED_BY):
            return None
        if record.phase in FINISHED_BY:
            why = "an interrupted rollback finished on resume"
            record = self._restore(task, record, actions, phase=FINISHED_BY[record.phase], why=why)
        return _Outcome(
            "failed",
            f"rollout {self.rollout_id} of {record.service} was {record.phase}: a new rollout ships it again",
            actions,
        )

    def _request_before(
        self, task: Task, record: RolloutRecord | None, actions: list[str]
    ) -> _Outcome | None:
        """A person's request seen before a one-step task (deploy, promote): pause holds before it, abort
        restores what this rollout changed here, resume is consumed and the task goes on."""
        requested = self.state.requested(self.rollout_id)
        if requested == "resume":
            self.state.clear_request(self.rollout_id, "resume")
        elif requested == "pause":
            if record is not None and record.phase != "paused":
                self.state.update(
                    record, task.id, "paused", "paused by request", phase="paused", hold="request"
                )
            return _Outcome("paused", f"paused by request before {task.id}", [])
        elif requested == "abort":
            if record is None:
                return _Outcome("failed", f"aborted by request before {task.id}: nothing changed here", [])
            self._restore(task, record, actions, phase="aborted", why="aborted by request")
            return _Outcome("failed", f"aborted by request before {task.id}; rolled back", actions)
        return None

    def _deploy(self, task: Task, actions: list[str]) -> _Outcome:
        return self._roll_stable(task, actions, kind_word="deployed")

    def _roll_stable(self, task: Task, actions: list[str], kind_word: str) -> _Outcome:
        assert task.service is not None
        name, env = task.service, task.environment or ""
        dep = self._deployment(name)
        container = self._container(dep, name)
        record = self.state.get(self.rollout_id, name, env)
        if (ended := self._ended(task, record, actions)) is not None:
            return ended
        if (held := self._request_before(task, record, actions)) is not None:
            return held
        target = self._target_image(task, container.image, record)
        if record is None:
            if container.image == target and not self._deployment(f"{name}-canary", missing_ok=True):
                self._wait_available(name, dep.spec.replicas or 0, target, name)
                return _Outcome("succeeded", f"{target} already runs", [])
            record = self.state.begin(
                self.rollout_id,
                name,
                env,
                task.id,
                namespace=self.namespace,
                strategy=str(task.params.get("strategy", "rolling")),
                mode="deployment",
                total_replicas=dep.spec.replicas,
                previous_image=container.image,
                previous_replicas=dep.spec.replicas,
                canary_image=target,
            )
        total = record.total_replicas if record.total_replicas is not None else (dep.spec.replicas or 0)
        body: dict[str, Any] = {}
        if container.image != target:
            body["spec"] = {"template": {"spec": {"containers": [{"name": container.name, "image": target}]}}}
        if (dep.spec.replicas or 0) != total:
            body.setdefault("spec", {})["replicas"] = total
        if body:
            body["metadata"] = {"annotations": self._annotations(record.step + 1, record)}
            dep = self._patch_deployment(name, body)
            if self._container(dep, name).image != target or dep.spec.replicas != total:
                raise KubeFailure(f"deployment {name}: patch did not hold (read back differs)")
            actions.append(f"set deployment {name} image {target}, {total} replicas")
            record = self.state.update(
                record, task.id, "step", f"image {target}, {total} replicas", step=record.step + 1
            )
        try:
            self._wait_available(name, total, target, name)
        except KubeFailure as exc:
            self.state.update(record, task.id, "failed", str(exc), phase="failed")
            raise
        if self._delete_deployment(f"{name}-canary"):
            actions.append(f"delete deployment {name}-canary")
        if record.phase != "promoted":
            self.state.update(record, task.id, "promoted", f"{target} available at {total}", phase="promoted")
        if not actions:
            return _Outcome("succeeded", f"{target} already runs", [])
        return _Outcome("succeeded", f"{kind_word} {target}: {total}/{total} available", actions)

    # --- canary and blue-green ----------------------------------------------------------------------------

    def _canary(self, task: Task, actions: list[str]) -> _Outcome:
        if task.params.get("strategy") == "blue-green":
            return self._blue_green(task, actions)
        if self.argo_rollouts_installed():
            return self._argo_canary(task, actions)
        assert task.service is not None
        name = task.service
        steps: list[dict[str, Any]] = list(task.params.get("steps", []))
        stable = self._deployment(name)
        container = self._container(stable, name)
        record = self._begin_canary(task, stable, container.image, "deployment")
        if (ended := self._ended(task, record, actions)) is not None:
            return ended
        if record.phase == "promoted":
            return _Outcome("succeeded", f"{record.canary_image} already promoted", [])
        record = self._resume(task, record, actions)
        weight = last_weight(steps, record.step)
        if record.step > 0 and weight is not None:  # reconcile the objects to the recorded step
            self._set_weight(task, record, stable, weight, actions)
        for i in range(record.step, len(steps)):
            held = self._check_request(task, record)
            if held is not None:
                actions.extend(held.actions)
                return held
            step = steps[i]
            if "set_weight" in step:
                w = int(step["set_weight"])
                stable_n, canary_n = self._set_weight(task, record, stable, w, actions)
                record = self.state.update(
                    record,
                    task.id,
                    "step",
                    f"step {i}: weight {w}% (canary {canary_n}, stable {stable_n})",
                    step=i + 1,
                )
            else:
                record, stop = self._pause_step(task, record, i, str(step["pause"]), actions)
                if stop is not None:
                    return stop
        final = last_weight(steps, len(steps)) or 0
        return _Outcome("succeeded", f"canary {record.canary_image} at {final}%, analysis passed", actions)

    def _begin_canary(self, task: Task, stable: Any, image: str, mode: str) -> RolloutRecord:
        assert task.service is not None
        record = self.state.get(self.rollout_id, task.service, task.environment or "")
        if record is not None:
            return record
        target = self._target_image(task, image, None)
        selector = None
        if task.params.get("strategy") == "blue-green":
            selector = dict(self._service(task.service).spec.selector or {})
        return self.state.begin(
            self.rollout_id,
            task.service,
            task.environment or "",
            task.id,
            namespace=self.namespace,
            strategy=str(task.params.get("strategy", "canary")),
            mode=mode,
            total_replicas=stable.spec.replicas,
            previous_image=image,
            previous_replicas=stable.spec.replicas,
            canary_image=target,
            previous_selector=selector,
        )

    def _resume(self, task: Task, record: RolloutRecord, actions: list[str]) -> RolloutRecord:
        """A record past step 0 means an earlier run did those steps: note the resume. A paused record goes
        on unless a pause is still requested; a person's `resume` also lifts an analysis hold (the step that
        paused counts as passed), while a plain re-run judges that step again."""
        requested = self.state.requested(self.rollout_id)
        if requested == "resume":
            self.state.clear_request(self.rollout_id, "resume")
        if record.phase == "paused" and requested != "pause":
            lift = requested == "resume" and record.hold == "analysis"
            return self.state.update(
                record,
                task.id,
                "resumed",
                f"resumed at step {record.step}" + (" (analysis hold lifted by request)" if lift else ""),
                phase="progressing",
                hold=None,
                step=record.step + 1 if lift else record.step,
            )
        if record.step > 0 and record.phase != "paused":
            self.state.log(record, task.id, "resumed", f"resumed at step {record.step}")
        return record

    def _pause_step(
        self, task: Task, record: RolloutRecord, i: int, duration: str, actions: list[str]
    ) -> tuple[RolloutRecord, _Outcome | None]:
        assert task.service is not None
        if self.analyst is None:
            self.sleep(float(duration_seconds(duration)))
            return self.state.update(
                record, task.id, "step", f"step {i}: waited {duration}", step=i + 1
            ), None
        verdict = self.analyst.analyse(
            task.service,
            task.environment or "",
            tag_of(record.previous_image),
            tag_of(record.canary_image),
            i,
        )
        self.verdicts.setdefault(task.id, []).append(verdict)
        data = verdict_data(verdict)
        if verdict.action == "rollback":
            self._restore(task, record, actions, phase="rolled-back", why=verdict.why, verdict=data)
            return record, _Outcome("failed", f"analysis at step {i}: rollback: {verdict.why}", actions)
        if verdict.action == "pause":
            record = self.state.update(
                record,
                task.id,
                "paused",
                f"step {i}: analysis inconclusive: {verdict.why}",
                phase="paused",
                hold="analysis",
                verdict=data,
            )
            return record, _Outcome("paused", f"analysis at step {i} inconclusive: {verdict.why}", actions)
        record = self.state.update(
            record,
            task.id,
            "step",
            f"step {i}: analysis {verdict.action}: {verdict.why}",
            step=i + 1,
            verdict=data,
        )
        return record, None

    def _set_weight(
        self, task: Task, record: RolloutRecord, stable: Any, weight: int, actions: list[str]
    ) -> tuple[int, int]:
        """Bring stable and canary Deployments to the split of `weight` (canary up first, then stable down),
        read back and wait until both are available."""
        assert task.service is not None and record.canary_image is not None
        name, canary_name = task.service, f"{task.service}-canary"
        total = record.total_replicas or 0
        stable_n, canary_n = replica_split(total, weight)
        notes = self._annotations(record.step + 1, record)
        canary = self._deployment(canary_name, missing_ok=True)
        if canary is None and canary_n > 0:
            body = self._copy_deployment(stable, canary_name, "canary", canary_n, record.canary_image, notes)
            self._call(
                f"deployment {canary_name}", self._apps.create_namespaced_deployment, self.namespace, body
            )
            actions.append(f"create deployment {canary_name} ({record.canary_image}, {canary_n} replicas)")
        elif canary is not None and canary.spec.replicas != canary_n:
            self._patch_deployment(
                canary_name, {"metadata": {"annotations": notes}, "spec": {"replicas": canary_n}}
            )
            actions.append(f"scale deployment {canary_name} to {canary_n}")
        if canary_n > 0 or canary is not None:
            read = self._wait_available(canary_name, canary_n, record.canary_image, name)
            if read.spec.replicas != canary_n:
                raise KubeFailure(
                    f"deployment {canary_name}: replicas read back {read.spec.replicas}, not {canary_n}"
                )
        current = self._deployment(name)
        if current.spec.replicas != stable_n:
            read = self._patch_deployment(
                name, {"metadata": {"annotations": notes}, "spec": {"replicas": stable_n}}
            )
            if read.spec.replicas != stable_n:
                raise KubeFailure(
                    f"deployment {name}: replicas read back {read.spec.replicas}, not {stable_n}"
                )
            actions.append(f"scale deployment {name} to {stable_n}")
        self._wait_available(name, stable_n, None, name)
        return stable_n, canary_n

    def _copy_deployment(
        self, stable: Any, name: str, track: str, replicas: int, image: str, notes: dict[str, str]
    ) -> dict[str, Any]:
        """The stable Deployment as a dict, renamed, with the track label on selector and pods and the new
        image."""
        src = self.api_client.sanitize_for_serialization(stable)
        spec = copy.deepcopy(src["spec"])
        spec.pop("paused", None)
        spec["replicas"] = replicas
        spec["selector"].setdefault("matchLabels", {})[TRACK] = track
        template_meta = spec["template"].setdefault("metadata", {})
        template_meta.setdefault("labels", {})[TRACK] = track
        containers = spec["template"]["spec"]["containers"]
        chosen = next((c for c in containers if c["name"] == stable.metadata.name), containers[0])
        chosen["image"] = image
        labels = dict(src["metadata"].get("labels") or {})
        labels[TRACK] = track
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels, "annotations": notes},
            "spec": spec,
        }

    def _restore(
        self,
        task: Task,
        record: RolloutRecord,
        actions: list[str],
        phase: str,
        why: str,
        verdict: dict[str, Any] | None = None,
    ) -> RolloutRecord:
        """Put back what ran before the rollout: the selector (blue-green), the stable image and replicas;
        delete the canary or preview. Idempotent."""
        assert task.service is not None
        name = task.service
        final = record.phase in ("rolled-back", "aborted")
        if not final and record.phase not in ("rolling-back", "aborting"):
            fields: dict[str, Any] = {"phase": RESTORING[phase], "hold": None}
            if verdict is not None:
                fields["verdict"] = verdict
            record = self.state.update(record, task.id, RESTORING[phase], why, **fields)
        if record.mode == "argo":
            self._argo_abort(name, actions)
        else:
            if record.previous_selector is not None:
                svc = self._service(name)
                if dict(svc.spec.selector or {}) != record.previous_selector:
                    self._set_selector(name, record.previous_selector)
                    actions.append(f"switch service {name} selector back to {record.previous_selector}")
            for extra in (f"{name}-canary", f"{name}-preview"):
                if self._delete_deployment(extra):
                    actions.append(f"delete deployment {extra}")
            dep = self._deployment(name)
            container = self._container(dep, name)
            body: dict[str, Any] = {}
            if record.previous_image and container.image != record.previous_image:
                body["spec"] = {
                    "template": {
                        "spec": {"containers": [{"name": container.name, "image": record.previous_image}]}
                    }
                }
            if record.previous_replicas is not None and dep.spec.replicas != record.previous_replicas:
                body.setdefault("spec", {})["replicas"] = record.previous_replicas
            if body:
                body["metadata"] = {"annotations": {f"{ANNOTATION}/rolled-back": why[:200]}}
                self._patch_deployment(name, body)
                actions.append(
                    f"restore deployment {name}: {record.previous_image}, {record.previous_replicas} replicas"
                )
            self._wait_available(
                name,
                record.previous_replicas
                if record.previous_replicas is not None
                else (dep.spec.replicas or 0),
                record.previous_image,
                name,
            )
        if not final:  # a rollout already rolled back or aborted keeps the phase it ended in
            ended = FINISHED_BY.get(record.phase, phase)
            record = self.state.update(record, task.id, ended, why, phase=ended, hold=None)
        return record

    # --- blue-green --------------------------------------------------------------------------------------

    def _template_hash(self, deployment: Any) -> str:
        """The pod-template-hash of the Deployment's current ReplicaSet (its revision's)."""
        revision = (deployment.metadata.annotations or {}).get("deployment.kubernetes.io/revision")
        selector = ",".join(f"{k}={v}" for k, v in (deployment.spec.selector.match_labels or {}).items())
        sets = self._call(
            f"replicasets of deployment {deployment.metadata.name}",
            self._apps.list_namespaced_replica_set,
            self.namespace,
            label_selector=selector,
        ).items
        for rs in sets:
            owners = [o.uid for o in rs.metadata.owner_references or []]
            rs_revision = (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision")
            if deployment.metadata.uid in owners and rs_revision == revision:
                return str(rs.metadata.labels["pod-template-hash"])
        raise KubeFailure(f"deployment {deployment.metadata.name}: no ReplicaSet of revision {revision} yet")

    def _set_selector(self, service: str, selector: dict[str, str]) -> None:
        # A JSON merge patch would keep keys missing from the new selector; replace the whole map.
        body = [{"op": "replace", "path": "/spec/selector", "value": selector}]
        self._call(f"service {service}", self._core.patch_namespaced_service, service, self.namespace, body)
        read = dict(self._service(service).spec.selector or {})
        if read != selector:
            raise KubeFailure(f"service {service}: selector read back {read}, not {selector}")

    def _blue_green(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        name, preview_name = task.service, f"{task.service}-preview"
        stable = self._deployment(name)
        container = self._container(stable, name)
        record = self._begin_canary(task, stable, container.image, "deployment")
        if (ended := self._ended(task, record, actions)) is not None:
            return ended
        if record.phase == "promoted":
            return _Outcome("succeeded", f"{record.canary_image} already serves", [])
        assert record.previous_selector is not None and record.canary_image is not None
        pauses = [str(s["pause"]) for s in task.params.get("steps", []) if "pause" in s] or ["0s"]
        # steps: 0 pin the Service to the stable pods, 1 preview up, 2.. analyses, last: switch
        plan = ["pin", "preview", *[f"analysis:{p}" for p in pauses], "switch"]
        record = self._resume(task, record, actions)
        total = record.total_replicas or 0
        for i in range(min(record.step, 2)):  # reconcile what earlier runs did (no-ops when it held)
            self._blue_green_step(plan[i], task, record, stable, total, actions)
        for i in range(record.step, len(plan)):
            held = self._check_request(task, record)
            if held is not None:
                actions.extend(held.actions)
                return held
            if plan[i].startswith("analysis:"):
                record, stop = self._pause_step(task, record, i, plan[i].split(":", 1)[1], actions)
                if stop is not None:
                    return stop
                continue
            detail = self._blue_green_step(plan[i], task, record, stable, total, actions)
            record = self.state.update(record, task.id, "step", f"step {i}: {detail}", step=i + 1)
        return _Outcome(
            "succeeded", f"service {name} switched to {preview_name} ({record.canary_image})", actions
        )

    def _blue_green_step(
        self, step: str, task: Task, record: RolloutRecord, stable: Any, total: int, actions: list[str]
    ) -> str:
        assert task.service is not None and record.previous_selector is not None
        assert record.canary_image is not None
        name, preview_name = task.service, f"{task.service}-preview"
        if step == "pin":
            pinned = {**record.previous_selector, "pod-template-hash": self._template_hash(stable)}
            if dict(self._service(name).spec.selector or {}) != pinned:
                self._annotate_service(name, record)
                self._set_selector(name, pinned)
                actions.append(f"pin service {name} to the pods of deployment {name}")
            return f"service {name} pinned to {pinned}"
        if step == "preview":
            if self._deployment(preview_name, missing_ok=True) is None:
                notes = self._annotations(2, record)
                # the new version is the analysis' canary track, whichever strategy runs it
                body = self._copy_deployment(
                    stable, preview_name, "canary", total, record.canary_image, notes
                )
                self._call(
                    f"deployment {preview_name}",
                    self._apps.create_namespaced_deployment,
                    self.namespace,
                    body,
                )
                actions.append(f"create deployment {preview_name} ({record.canary_image}, {total} replicas)")
            self._wait_available(preview_name, total, record.canary_image, name)
            return f"preview {record.canary_image} available at {total}"
        # switch
        preview = self._deployment(preview_name)
        switched = {**record.previous_selector, "pod-template-hash": self._template_hash(preview)}
        if dict(self._service(name).spec.selector or {}) != switched:
            self._set_selector(name, switched)
            actions.append(f"switch service {name} to deployment {preview_name}")
        return f"service {name} selects {switched}"

    def _annotate_service(self, name: str, record: RolloutRecord) -> None:
        notes = {
            f"{ANNOTATION}/rollout-id": self.rollout_id,
            f"{ANNOTATION}/previous-selector": json.dumps(record.previous_selector, sort_keys=True),
        }
        body = {"metadata": {"annotations": notes}}
        self._call(f"service {name}", self._core.patch_namespaced_service, name, self.namespace, body)

    # --- Argo Rollouts -------------------------------------------------------------------------------------

    def argo_rollouts_installed(self) -> bool:
        """Whether discovery lists `rollouts` in argoproj.io/v1alpha1 (asked once per executor)."""
        if self._argo is None:
            found = self._call(
                f"API group {ARGO_GROUP}/{ARGO_VERSION}",
                self._custom.get_api_resources,
                ARGO_GROUP,
                ARGO_VERSION,
                missing_ok=True,
            )
            self._argo = found is not None and any(r.name == ARGO_PLURAL for r in found.resources or [])
        return self._argo

    def _rollout_object(self, name: str) -> Any:
        return self._call(
            f"rollout {name}",
            self._custom.get_namespaced_custom_object,
            ARGO_GROUP,
            ARGO_VERSION,
            self.namespace,
            ARGO_PLURAL,
            name,
            missing_ok=True,
        )

    def _patch_rollout(self, name: str, body: dict[str, Any], subresource: str | None = None) -> Any:
        """A merge patch of the Rollout `name` (its status subresource where Argo's plugin writes there)."""
        patch = (
            self._custom.patch_namespaced_custom_object_status
            if subresource == "status"
            else self._custom.patch_namespaced_custom_object
        )
        return self._call(
            f"rollout {name}", patch, ARGO_GROUP, ARGO_VERSION, self.namespace, ARGO_PLURAL, name, body
        )

    def _argo_canary(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        name = task.service
        stable = self._deployment(name)
        container = self._container(stable, name)
        record = self._begin_canary(task, stable, container.image, "argo")
        assert record.canary_image is not None
        src = self.api_client.sanitize_for_serialization(stable)
        template = copy.deepcopy(src["spec"]["template"])
        for c in template["spec"]["containers"]:
            if c["name"] == container.name:
                c["image"] = record.canary_image
        steps = argo_steps(list(task.params.get("steps", [])))
        spec = {
            "replicas": record.total_replicas,
            "selector": src["spec"]["selector"],
            "template": template,
            "strategy": {"canary": {"steps": steps}},
        }
        meta = {
            "name": name,
            "labels": src["metadata"].get("labels") or {},
            "annotations": self._annotations(0, record),
        }
        current = self._rollout_object(name)
        initial = (
            f"rollout {name} created at the running version {container.image}: Argo skips the steps of a "
            f"Rollout's first revision, so it becomes stable first; `awo rollout resume` then ships "
            f"{record.canary_image} through the {len(steps)} steps"
        )
        if current is None:
            first = copy.deepcopy(template)
            for c in first["spec"]["containers"]:
                if c["name"] == container.name:
                    c["image"] = container.image
            body = {
                "apiVersion": f"{ARGO_GROUP}/{ARGO_VERSION}",
                "kind": "Rollout",
                "metadata": meta,
                "spec": {**spec, "template": first},
            }
            self._call(
                f"rollout {name}",
                self._custom.create_namespaced_custom_object,
                ARGO_GROUP,
                ARGO_VERSION,
                self.namespace,
                ARGO_PLURAL,
                body,
            )
            actions.append(f"create rollout {name} at the running version {container.image}")
            self.state.update(record, task.id, "paused", initial, phase="paused", hold="argo-initial")
            return _Outcome("paused", initial, actions)
        if record.hold == "argo-initial" and self.state.requested(self.rollout_id) != "resume":
            return _Outcome("paused", initial, actions)
        if (
            current.get("spec", {}).get("template") != template
            or current["spec"].get("strategy") != spec["strategy"]
        ):
            self._patch_rollout(name, {"metadata": {"annotations": meta["annotations"]}, "spec": spec})
            actions.append(f"patch rollout {name} ({record.canary_image}, {len(steps)} steps)")
        read = self._rollout_object(name)
        if read is None or read["spec"]["strategy"] != spec["strategy"]:
            raise KubeFailure(f"rollout {name}: read back differs from what was written")
        if record.step == 0:
            record = self.state.update(
                record, task.id, "step", f"rollout {name} written with {len(steps)} steps", step=1
            )
        # A person's request goes to Argo's controller the way its kubectl plugin sends it.
        requested = self.state.requested(self.rollout_id)
        if requested == "abort":
            self._restore(task, record, actions, phase="aborted", why="aborted by request")
            return _Outcome("failed", f"rollout {name} aborted by request (status.abort)", actions)
        paused = requested == "pause"
        if bool(read["spec"].get("paused", False)) != paused:
            self._patch_rollout(name, {"spec": {"paused": paused}})
            actions.append(f"{'pause' if paused else 'resume'} rollout {name}")
        if paused:
            if record.phase != "paused":
                self.state.update(
                    record, task.id, "paused", "spec.paused set", phase="paused", hold="request"
                )
            return _Outcome("paused", f"rollout {name} paused by request (spec.paused)", actions)
        if requested == "resume":
            self.state.clear_request(self.rollout_id, "resume")
            if record.phase == "paused":
                self.state.update(
                    record, task.id, "resumed", "spec.paused cleared", phase="progressing", hold=None
                )
        return _Outcome(
            "succeeded", f"rollout {name} written: Argo Rollouts carries out {len(steps)} steps", actions
        )

    def _argo_status(self, name: str, status: dict[str, Any], what: str, actions: list[str]) -> None:
        current = self._rollout_object(name)
        if current is None:
            raise KubeFailure(f"rollout {name}: not found")
        if all(current.get("status", {}).get(k) == v for k, v in status.items()):
            return
        self._patch_rollout(name, {"status": status}, subresource="status")
        actions.append(f"{what} rollout {name}")

    def _argo_abort(self, name: str, actions: list[str]) -> None:
        self._argo_status(name, {"abort": True}, "abort", actions)

    # --- promote and rollback ------------------------------------------------------------------------------

    def _promote(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        record = self.state.get(self.rollout_id, task.service, task.environment or "")
        if (ended := self._ended(task, record, actions)) is not None:
            return ended
        if (held := self._request_before(task, record, actions)) is not None:
            return held
        if record is not None and record.mode == "argo":
            self._argo_status(task.service, {"promoteFull": True}, "promote", actions)
            if record.phase != "promoted":
                self.state.update(record, task.id, "promoted", "status.promoteFull set", phase="promoted")
            return _Outcome("succeeded", f"rollout {task.service} promoted (status.promoteFull)", actions)
        if record is not None and record.strategy == "blue-green":
            return self._promote_blue_green(task, record, actions)
        return self._roll_stable(task, actions, kind_word="promoted")

    def _promote_blue_green(self, task: Task, record: RolloutRecord, actions: list[str]) -> _Outcome:
        assert task.service is not None
        preview = self._deployment(f"{task.service}-preview")
        switched = {**(record.previous_selector or {}), "pod-template-hash": self._template_hash(preview)}
        if dict(self._service(task.service).spec.selector or {}) != switched:
            self._set_selector(task.service, switched)
            actions.append(f"switch service {task.service} to deployment {task.service}-preview")
        if record.phase != "promoted":
            self.state.update(record, task.id, "promoted", f"service selects {switched}", phase="promoted")
        return _Outcome(
            "succeeded",
            f"{record.canary_image} serves; deployment {task.service} kept scaled for rollback",
            actions,
        )

    def _rollback(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        name, env = task.service, task.environment or ""
        record = self.state.get(self.rollout_id, name, env)
        to = str(task.params.get("to", "previous"))
        if record is not None and to in ("previous", tag_of(record.previous_image)):
            record = self._restore(task, record, actions, phase="rolled-back", why=f"rollback task {task.id}")
            detail = (
                f"rolled back to {record.previous_image}"
                if actions
                else f"{record.previous_image} already runs"
            )
            return _Outcome("succeeded", detail, actions)
        # No record of this rollout: the annotations an earlier awo rollout left, or the named ref.
        dep = self._deployment(name)
        container = self._container(dep, name)
        notes = dep.metadata.annotations or {}
        if to == "previous":
            target = notes.get(f"{ANNOTATION}/previous-image")
            if target is None:
                return _Outcome(
                    "succeeded", f"deployment {name}: no recorded previous image: nothing to roll back", []
                )
            failed_ref = task.params.get("from")
            if failed_ref is not None and tag_of(container.image) != str(failed_ref):
                return _Outcome("succeeded", f"{failed_ref} is not running: nothing to roll back", [])
        else:
            target = image_for_ref(container.image, to)
        replicas = dep.spec.replicas or 0
        if f"{ANNOTATION}/previous-replicas" in notes:
            replicas = int(notes[f"{ANNOTATION}/previous-replicas"])
        if self._delete_deployment(f"{name}-canary"):
            actions.append(f"delete deployment {name}-canary")
        if container.image != target or dep.spec.replicas != replicas:
            body = {
                "spec": {
                    "replicas": replicas,
                    "template": {"spec": {"containers": [{"name": container.name, "image": target}]}},
                }
            }
            self._patch_deployment(name, body)
            actions.append(f"set deployment {name} image {target}, {replicas} replicas")
        self._wait_available(name, replicas, target, name)
        return _Outcome(
            "succeeded", f"rolled back to {target}" if actions else f"{target} already runs", actions
        )

    # --- operations: restart, scale out, feature flag off -----------------------------------------------

    def _once(self, task: Task, kind: str) -> RolloutRecord | None:
        """The record a one-shot action logs to; None when this task already did it."""
        assert task.service is not None
        if self.state.task_events(self.rollout_id, task.id, kind):
            return None
        record = self.state.get(self.rollout_id, task.service, task.environment or "")
        if record is None:
            record = self.state.begin(
                self.rollout_id,
                task.service,
                task.environment or "",
                task.id,
                namespace=self.namespace,
                strategy="operation",
                mode="deployment",
                total_replicas=None,
                previous_image=None,
                previous_replicas=None,
                canary_image=None,
            )
        return record

    def _restart(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        name = task.service
        record = self._once(task, "restart")
        dep = self._deployment(name)
        if record is None:
            return _Outcome("succeeded", f"deployment {name} already restarted by {task.id}", [])
        stamp = _now()
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        self._patch_deployment(name, body)
        actions.append(f"restart deployment {name} ({RESTARTED_AT}={stamp})")
        self.state.log(record, task.id, "restart", f"deployment {name} restarted at {stamp}")
        self._wait_available(name, dep.spec.replicas or 0, None, name)
        return _Outcome("succeeded", f"deployment {name} restarted", actions)

    def _scale_out(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        name = task.service
        try:
            replicas = int(task.params["replicas"])
        except (KeyError, TypeError, ValueError):
            raise KubeFailure(f"scale_out task {task.id}: params.replicas must be a whole number") from None
        if replicas < 0:
            raise KubeFailure(f"scale_out task {task.id}: params.replicas {replicas} < 0")
        dep = self._deployment(name)
        if dep.spec.replicas != replicas:
            read = self._patch_deployment(name, {"spec": {"replicas": replicas}})
            if read.spec.replicas != replicas:
                raise KubeFailure(
                    f"deployment {name}: replicas read back {read.spec.replicas}, not {replicas}"
                )
            actions.append(f"scale deployment {name} from {dep.spec.replicas} to {replicas}")
        self._wait_available(name, replicas, None, name)
        return _Outcome(
            "succeeded", f"deployment {name} at {replicas} replicas" if actions else "already scaled", actions
        )

    def _flag_off(self, task: Task, actions: list[str]) -> _Outcome:
        assert task.service is not None
        flag = str(task.params.get("flag", ""))
        if not re.match(r"^[-._a-zA-Z0-9]{1,253}$", flag):
            raise KubeFailure(f"flag_off task {task.id}: params.flag {flag!r} is not a ConfigMap key")
        name = f"{task.service}-flags"
        cm = self._call(
            f"configmap {name}", self._core.read_namespaced_config_map, name, self.namespace, missing_ok=True
        )
        if cm is None:
            body = {
                "metadata": {"name": name, "annotations": {f"{ANNOTATION}/rollout-id": self.rollout_id}},
                "data": {flag: "false"},
            }
            self._call(f"configmap {name}", self._core.create_namespaced_config_map, self.namespace, body)
            actions.append(f"create configmap {name} with {flag}=false")
        elif (cm.data or {}).get(flag) != "false":
            self._call(
                f"configmap {name}",
                self._core.patch_namespaced_config_map,
                name,
                self.namespace,
                {"data": {flag: "false"}},
            )
            actions.append(f"set {flag}=false in configmap {name}")
        read = self._call(f"configmap {name}", self._core.read_namespaced_config_map, name, self.namespace)
        if (read.data or {}).get(flag) != "false":
            raise KubeFailure(
                f"configmap {name}: {flag} read back {(read.data or {}).get(flag)!r}, not 'false'"
            )
        return _Outcome("succeeded", f"flag {flag} off" if actions else f"flag {flag} already off", actions)


def api_client_from_settings(settings: Settings) -> Any:
    """A kubernetes ApiClient: the kubeconfig (settings, KUBECONFIG, ~/.kube/config) with its context, else
    the in-cluster service account."""
    import os

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = settings.kubeconfig
    if path is None and os.environ.get("KUBECONFIG"):
        path = Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
    if path is None and (Path.home() / ".kube" / "config").is_file():
        path = Path.home() / ".kube" / "config"
    try:
        if path is not None:
            if not path.is_file():
                raise BadConfig(f"setting 'kubeconfig': {path} does not exist")
            return config.new_client_from_config(config_file=str(path), context=settings.kube_context)
        config.load_incluster_config()
        return client.ApiClient()
    except ConfigException as exc:
        where = path if path is not None else "in-cluster config"
        raise BadConfig(f"kubeconfig {where}: {exc}".splitlines()[0]) from exc


def executor_from_settings(
    settings: Settings, rollout_id: str, analyst: CanaryAnalyst | None = None
) -> Executor:
    """The executor the settings ask for: a DryRunExecutor, or a KubernetesExecutor on the configured
    cluster and namespace with its state in `<data root>/rollouts.db`."""
    if settings.executor == "dry-run":
        return DryRunExecutor()
    return KubernetesExecutor(
        api_client_from_settings(settings),
        namespace=settings.kube_namespace,
        namespaces=settings.kube_namespaces,
        rollout_id=rollout_id,
        state=RolloutStore.in_data_root(settings.data_dir),
        analyst=analyst,
        poll_seconds=settings.kube_poll_seconds,
        timeout_seconds=settings.kube_timeout_seconds,
    )
