"""How a plan's tasks act on the world: one small `Executor` protocol (run a task, get a `TaskResult`) and
the `DryRunExecutor`, its in-memory twin for tests and the demo. Executors reconcile, as Kubernetes
controllers do: compare a task's desired state with what runs, act only on the difference, and say what
they did, so a repeated or resumed task is harmless. The Kubernetes executor sits behind the same protocol."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from agents.planner import Task

# paused: the task holds (an inconclusive analysis, or a person asked) until `awo rollout resume`
ResultStatus = Literal["succeeded", "failed", "skipped", "paused"]


class TaskResult(BaseModel):
    task_id: str
    status: ResultStatus
    detail: str = Field(default="", description="one line: what happened, or why it failed")
    actions: list[str] = Field(default_factory=list, description="what changed in the world (empty: nothing)")


class Executor(Protocol):
    """Runs one task of any kind. Must be idempotent: running a task whose desired state already holds
    changes nothing and succeeds. Raises only for its own bugs; a task that fails is a `failed` result."""

    name: str

    def run(self, task: Task) -> TaskResult: ...


class DryRunExecutor:
    """Records every action in memory instead of acting. Its world: the version each service runs in each
    environment (with the versions before it), open canaries, blocked refs, tests run, notifications and
    incidents. `fail` maps task ids to the reason they fail (`{"canary:payments": "error rate 4% > 1%"}`)."""

    name = "dry-run"

    def __init__(
        self, fail: Mapping[str, str] | None = None, running: Mapping[tuple[str, str], str] | None = None
    ) -> None:
        self.fail = dict(fail or {})
        self.running: dict[tuple[str, str], str] = dict(running or {})  # (environment, service) -> version
        self.history: dict[tuple[str, str], list[str]] = {}  # versions that ran before, oldest first
        self.canaries: dict[tuple[str, str], tuple[str, int]] = {}  # (environment, service) -> (version, %)
        self.blocked: set[str] = set()
        self.tested: set[str] = set()
        self.notifications: list[str] = []
        self.incidents: list[str] = []
        self.restarts: dict[tuple[str, str], int] = {}  # (environment, service) -> restarts done
        self.replicas: dict[tuple[str, str], int] = {}  # (environment, service) -> replicas asked for
        self.flags_off: set[tuple[str, str, str]] = set()  # (environment, service, flag)
        self.actions: list[tuple[str, str]] = []  # (task id, action), in the order done
        self.calls: list[str] = []  # task ids run, repeats included
        self._succeeded: set[str] = set()

    def run(self, task: Task) -> TaskResult:
        self.calls.append(task.id)
        if task.id in self._succeeded:
            return TaskResult(task_id=task.id, status="succeeded", detail="already done")
        handler = getattr(self, f"_{task.kind}")
        actions, detail = handler(task)
        for action in actions:
            self.actions.append((task.id, action))
        if task.id in self.fail:
            return TaskResult(task_id=task.id, status="failed", detail=self.fail[task.id], actions=actions)
        self._succeeded.add(task.id)
        return TaskResult(task_id=task.id, status="succeeded", detail=detail, actions=actions)

    # each handler returns (actions, detail); an empty action list means the world already was as desired

    def _analyse(self, task: Task) -> tuple[list[str], str]:
        gate = task.params.get("gate", "unknown")
        return [], f"gate {gate}" + (
            " (a person reviews before deploys)" if task.params.get("requires_review") else ""
        )

    def _test(self, task: Task) -> tuple[list[str], str]:
        ref = str(task.params.get("ref"))
        suites = [s["name"] if isinstance(s, dict) else str(s) for s in task.params.get("suites", [])]
        if ref in self.tested:
            return [], f"{ref} already tested"
        self.tested.add(ref)
        return [
            f"run suites {', '.join(suites) or '(none)'} on {ref}"
        ], f"{len(suites)} suites passed (dry run)"

    def _set(self, key: tuple[str, str], ref: str) -> None:
        current = self.running.get(key)
        if current is not None and current != ref:
            self.history.setdefault(key, []).append(current)
        self.running[key] = ref

    def _deploy(self, task: Task) -> tuple[list[str], str]:
        key, ref = _key(task), str(task.params.get("ref"))
        if self.running.get(key) == ref:
            return [], f"{ref} already runs"
        self._set(key, ref)
        return [
            f"deploy {task.service} {ref} to {task.environment} ({task.params.get('strategy', 'rolling')})"
        ], "deployed"

    def _canary(self, task: Task) -> tuple[list[str], str]:
        key, ref = _key(task), str(task.params.get("ref"))
        steps: list[dict[str, Any]] = list(task.params.get("steps", []))
        weights = [int(s["set_weight"]) for s in steps if "set_weight" in s]
        final = weights[-1] if weights else 0
        if self.running.get(key) == ref or self.canaries.get(key) == (ref, final):
            return [], f"canary of {ref} already at {final}%"
        actions = [_wait(task)] if task.params.get("not_before") else []
        if task.params.get("strategy") == "blue-green":
            actions.append(
                f"start {task.service} {ref} as the preview beside the active version in {task.environment}"
            )
        for step in steps:
            if "set_weight" in step:
                actions.append(
                    f"set {task.service} canary {ref} in {task.environment} to {step['set_weight']}%"
                )
            else:
                actions.append(f"pause {step['pause']}")
        for analysis in task.params.get("analysis", []):
            actions.append(
                f"analysis {analysis['name']}: {analysis['metric']} {analysis['success_condition']}"
            )
        self.canaries[key] = (ref, final)
        return actions, f"canary at {final}%, analysis passed (dry run)"

    def _promote(self, task: Task) -> tuple[list[str], str]:
        key, ref = _key(task), str(task.params.get("ref"))
        if self.running.get(key) == ref:
            return [], f"{ref} already serves all traffic"
        actions = [_wait(task)] if task.params.get("not_before") else []
        self._set(key, ref)
        self.canaries.pop(key, None)
        actions.append(f"promote {task.service} {ref} in {task.environment} to 100%")
        return actions, "promoted"

    def _watch(self, task: Task) -> tuple[list[str], str]:
        names = [a["name"] for a in task.params.get("analysis", [])]
        seconds = task.params.get("duration_s", 0)
        return [], f"watched {seconds}s: {', '.join(names) or 'no analysis'} healthy (dry run)"

    def _rollback(self, task: Task) -> tuple[list[str], str]:
        key = _key(task)
        target = str(task.params.get("to", "previous"))
        actions = []
        if key in self.canaries:
            version, _ = self.canaries.pop(key)
            actions.append(f"abort the {task.service} canary {version} in {task.environment}")
        current = self.running.get(key)
        failed_ref = task.params.get("from")
        if target == "previous":
            if failed_ref is not None and current != failed_ref:
                return (
                    actions,
                    "canary aborted" if actions else f"{failed_ref} is not running: nothing to roll back",
                )
            before = self.history.get(key, [])
            if not before:
                if current is None:
                    return actions, "nothing ran before: nothing to roll back"
                del self.running[key]  # the dry run never saw what ran before; real executors read it back
                action = f"roll back {task.service} in {task.environment} to its previous version"
                return [*actions, action], "rolled back"
            target = before.pop()
            self.running[key] = target
        elif current == target:
            return actions, f"{target} already runs"
        else:
            self._set(key, target)
        actions.append(f"roll back {task.service} in {task.environment} from {current} to {target}")
        return actions, f"rolled back to {target}"

    def _block(self, task: Task) -> tuple[list[str], str]:
        ref = str(task.params.get("ref"))
        if ref in self.blocked:
            return [], f"{ref} already blocked"
        self.blocked.add(ref)
        return [f"block {ref}"], str(task.params.get("reason", ""))

    def _record_incident(self, task: Task) -> tuple[list[str], str]:
        summary = str(task.params.get("summary", ""))
        self.incidents.append(summary)
        return [f"open a {task.params.get('severity', 'high')} incident on {task.service}"], summary

    def _notify(self, task: Task) -> tuple[list[str], str]:
        message = str(task.params.get("message", ""))
        self.notifications.append(message)
        return [f"notify: {message}"], "sent (dry run)"

    def _restart(self, task: Task) -> tuple[list[str], str]:
        # a repeated restart task is answered "already done" by `run`; a new one restarts again
        key = _key(task)
        ref = task.params.get("ref") or self.running.get(key) or "the running version"
        self.restarts[key] = self.restarts.get(key, 0) + 1
        return [f"restart {task.service} in {task.environment} ({ref})"], "restarted"

    def _scale_out(self, task: Task) -> tuple[list[str], str]:
        key, replicas = _key(task), int(task.params["replicas"])
        if self.replicas.get(key) == replicas:
            return [], f"{task.service} already runs {replicas} replicas"
        self.replicas[key] = replicas
        return [f"scale {task.service} in {task.environment} to {replicas} replicas"], "scaled out"

    def _flag_off(self, task: Task) -> tuple[list[str], str]:
        flag = str(task.params["flag"])
        key = (*_key(task), flag)
        if key in self.flags_off:
            return [], f"flag {flag} already off"
        self.flags_off.add(key)
        return [f"switch flag {flag} off for {task.service} in {task.environment}"], f"flag {flag} off"


def _key(task: Task) -> tuple[str, str]:
    return (task.environment or "", task.service or "")


def _wait(task: Task) -> str:
    return f"wait until {task.params['not_before']} (the policy's deploy slot)"
