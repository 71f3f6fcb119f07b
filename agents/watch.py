"""The bake-time watch after a full or blue-green rollout: nothing runs beside the new version to compare
with, so each metric of the analysis template is watched as one stream by the online anomaly detector
(agents/anomaly.py), warmed with the history before the rollout, and an anomaly acts as the policy's
`monitoring.on_anomaly` says: roll back, pause, or record an incident and go on."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.anomaly import DetectorConfig, StreamDetector
from agents.executor import Executor, TaskResult
from agents.judge import AnalysisTemplate, MetricSpec, relative_effect, render_query
from agents.monitor import Clock, MetricSourceError, PrometheusSource, SystemClock, promql_duration
from agents.planner import Task
from agents.policy import Monitoring

if TYPE_CHECKING:
    from agents.policy import Policy
    from features.settings import Settings

RECENT = 10  # points whose median is the level an alarm is compared with


@dataclass(frozen=True)
class Anomaly:
    """One alarm that counted: the metric, when, its value against the recent level, the detector's score."""

    metric: str
    at: float  # Unix seconds
    value: float
    level: float
    score: float

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"{self.metric} {self.value:.4g} against a recent level of {self.level:.4g} at {when} "
            f"(anomaly score {self.score:.2f})"
        )


def counts(spec: MetricSpec, value: float, recent: list[float]) -> float | None:
    """The recent level when an alarm at `value` is a regression: in the metric's bad direction from the
    median of the recent points and beyond its tolerance (the judge's band); None otherwise. A drop in error
    rate or a rise in conversion is no incident, and noise inside the tolerance raises none."""
    if not recent:
        return None
    level = statistics.median(recent)
    change = relative_effect(level, value)
    if spec.bad == "increase" and change > spec.tolerance:
        return level
    if spec.bad == "decrease" and change < -spec.tolerance:
        return level
    if spec.bad == "either" and abs(change) > spec.tolerance:
        return level
    return None


class MetricStream:
    """One metric of one service as a stream of per-interval values from Prometheus: a rate metric's
    numerator / denominator of the interval, a continuous metric's query at the interval's resolution."""

    def __init__(
        self, spec: MetricSpec, source: PrometheusSource, service: str, namespace: str, interval_s: float
    ) -> None:
        self.spec = spec
        self.source = source
        self.interval_s = interval_s
        # after a full rollout the pods carry no track label: `track=""` selects them
        self.values = {
            "service": service,
            "namespace": namespace,
            "track": "",
            "ref": "",
            "interval": promql_duration(interval_s),
            "step": promql_duration(interval_s),
        }

    def points(self, start: float, end: float) -> list[tuple[float, float]]:
        """(time, value) of every interval ending in [start, end], oldest first."""
        spec = self.spec
        if spec.kind == "rate":
            if not (spec.numerator_query and spec.denominator_query):
                raise MetricSourceError(f"analysis template: metric {spec.name}: no Prometheus queries")
            top = dict(self._range(spec.numerator_query, start, end))
            bottom = self._range(spec.denominator_query, start, end)
            return [(at, top.get(at, 0.0) / total) for at, total in bottom if total > 0]
        if not spec.query:
            raise MetricSourceError(f"analysis template: metric {spec.name}: no Prometheus query")
        return self._range(spec.query, start, end)

    def _range(self, query: str, start: float, end: float) -> list[tuple[float, float]]:
        return self.source.range_sum(render_query(query, **self.values), start, end, self.interval_s)


class StreamWatcher:
    """An Executor for `watch` tasks (other kinds go to `inner`). For the task's bake time (`duration_s`),
    every template interval: read each metric's newest points, score them with the metric's detector and act
    on the first anomaly that counts (see `counts`). Source failures in a row beyond the template's
    consecutive_error_limit pause the watch, naming the error; they never raise."""

    name = "stream-watch"

    def __init__(
        self,
        inner: Executor,
        template: AnalysisTemplate,
        source: PrometheusSource,
        monitoring: Monitoring,
        data_dir: Path,
        *,
        namespace: str = "default",
        namespaces: dict[str, str] | None = None,
        clock: Clock | None = None,
        detector: DetectorConfig | None = None,
    ) -> None:
        self.inner = inner
        self.template = template
        self.source = source
        self.monitoring = monitoring
        self.data_dir = Path(data_dir)
        self.namespace = namespace
        self.namespaces = dict(namespaces or {})
        self.clock = clock or SystemClock()
        self.detector = detector
        self.anomalies: dict[str, list[dict[str, Any]]] = {}  # task id -> what counted, for the audit

    def __getattr__(self, name: str) -> Any:  # the inner executor's state (verdicts, rollout state)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def run(self, task: Task) -> TaskResult:
        if task.kind != "watch" or not task.service:
            return self.inner.run(task)
        interval = float(self.template.interval_seconds)
        namespace = self.namespaces.get(task.environment or "", self.namespace)
        streams = [
            MetricStream(spec, self.source, task.service, namespace, interval)
            for spec in self.template.metrics
        ]
        detectors = {s.spec.name: StreamDetector(self.detector) for s in streams}
        recent: dict[str, list[float]] = {s.spec.name: [] for s in streams}
        seen: dict[str, float] = {}
        warmed: dict[str, int] = {}  # points of history per metric
        start = self.clock.now()
        try:  # warm up on the history before the rollout; its alarms are the past, not this rollout
            for stream in streams:
                history = stream.points(start - self.monitoring.history_intervals * interval, start)
                warmed[stream.spec.name] = len(history)
                for at, value in history:
                    detectors[stream.spec.name].update(at, value)
                    recent[stream.spec.name] = [*recent[stream.spec.name], value][-RECENT:]
                    seen[stream.spec.name] = at
        except MetricSourceError as exc:
            return TaskResult(
                task_id=task.id, status="paused", detail=f"watch cannot read its metrics: {exc}"
            )
        learn = (self.detector or DetectorConfig()).learn
        # a detector scores 0 until it has seen `learn` points: a short history leaves the watch partly blind
        short = {name: n for name, n in warmed.items() if n < learn}
        duration = float(task.params.get("duration_s", 0))
        errors, last_error = 0, ""
        ticks = max(1, int(duration // interval))
        for tick in range(1, ticks + 1):
            # query on the warm-up's grid (start + k * interval), not at the clock's slightly late `now`: an
            # off-grid end would feed a second, almost entirely overlapping point every tick
            due = start + tick * interval
            self.clock.sleep(due - self.clock.now())
            try:
                fresh = {s.spec.name: s.points(due - 2 * interval, due) for s in streams}
            except MetricSourceError as exc:
                errors, last_error = errors + 1, str(exc)
                if errors > self.template.consecutive_error_limit:
                    return TaskResult(
                        task_id=task.id,
                        status="paused",
                        detail=f"watch paused: metric source failed {errors} times in a row: {last_error}",
                    )
                continue
            errors = 0
            for stream in streams:
                name = stream.spec.name
                for at, value in fresh[name]:
                    if at <= seen.get(name, float("-inf")):
                        continue
                    seen[name] = at
                    score = detectors[name].update(at, value)
                    level = (
                        counts(stream.spec, value, recent[name])
                        if score >= StreamDetector.threshold
                        else None
                    )
                    recent[name] = [*recent[name], value][-RECENT:]
                    if level is not None:
                        return self._act(task, Anomaly(name, at, value, level, score))
        blind = "".join(
            f"; {name} had {n} points of history, the detector alarms only after {learn}"
            for name, n in short.items()
        )
        return TaskResult(
            task_id=task.id,
            status="succeeded",
            detail=f"watched {duration:.0f}s: {len(streams)} metrics, no anomaly{blind}",
        )

    def _act(self, task: Task, anomaly: Anomaly) -> TaskResult:
        self.anomalies.setdefault(task.id, []).append(
            {k: getattr(anomaly, k) for k in ("metric", "at", "value", "level", "score")}
        )
        said = f"anomaly in {task.service}: {anomaly.describe()}"
        action = self.monitoring.on_anomaly
        if action == "rollback":
            return TaskResult(task_id=task.id, status="failed", detail=said)
        if action == "pause":
            return TaskResult(task_id=task.id, status="paused", detail=said)
        from agents.feedback import record_incident

        incident_id = f"awo-watch-{task.service}-{int(anomaly.at)}"
        record_incident(
            self.data_dir,
            {
                "incident_id": incident_id,
                "service": task.service,
                "severity": "high",
                "started_at": datetime.fromtimestamp(anomaly.at, UTC),
                "resolved_at": None,
                "deploy_id": None,
                "sha": None,
                "summary": said,
            },
        )
        return TaskResult(
            task_id=task.id,
            status="succeeded",
            detail=f"{said}; incident {incident_id} recorded (the policy goes on)",
            actions=[f"record incident {incident_id} in feedback/incidents.csv"],
        )


def watcher_from_settings(settings: Settings, policy: Policy, inner: Executor) -> Executor:
    """`inner` with real bake-time watching when Prometheus is configured; `inner` alone otherwise."""
    if settings.prometheus_url is None:
        return inner
    from agents.judge import load_template

    return StreamWatcher(
        inner,
        load_template(settings.analysis_template),
        PrometheusSource(settings.prometheus_url),
        policy.monitoring,
        settings.data_dir,
        namespace=settings.kube_namespace,
        namespaces=settings.kube_namespaces,
    )
