"""The monitoring agent: each analysis step of a rollout measures canary and baseline per interval (from
Prometheus or metric files), hands the samples to the pure judge and returns its RunVerdict, as Argo
Rollouts' AnalysisRun controller does around its assess functions."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from agents.judge import (
    AnalysisTemplate,
    IntervalVerdict,
    RunVerdict,
    assess_run,
    judge_interval,
    read_metric_file,
    render_query,
    source_error,
)
from features.errors import AwoError

if TYPE_CHECKING:
    import httpx

Track = Literal["stable", "canary"]
Samples = dict[str, list[float]]


class MetricSourceError(AwoError):
    """One interval's measurement could not be taken; the analysis counts it toward the error limit."""


@dataclass(frozen=True)
class Window:
    """What to measure: one track of a service over one interval [start, end) (Unix seconds), the
    `index`-th interval of the analysis."""

    service: str
    namespace: str
    track: Track
    ref: str
    index: int
    start: float
    end: float


class MetricSource(Protocol):
    def measure(self, window: Window, template: AnalysisTemplate) -> Samples:
        """Samples per metric name over the window (count metrics: the counts of the interval); raises
        MetricSourceError when the source cannot answer."""
        ...


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall time, and real sleeping."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when slept on: the in-memory twin for tests and offline replays."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def promql_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class PrometheusSource:
    """Prometheus' HTTP API: a rate metric's counts by an instant query (`increase` over the interval) at
    the interval's end; a continuous metric's samples by a range query across the interval. `track_labels`
    is the value `{track}` takes for each track (PromQL's `track=""` matches pods without the label, as a
    stable Deployment's are when only its canary copy is labelled `track: canary`)."""

    def __init__(
        self, url: str, timeout_s: float = 10.0, track_labels: Mapping[Track, str] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.track_labels: dict[Track, str] = {"stable": "stable", "canary": "canary", **(track_labels or {})}

    def _get(
        self, client: httpx.Client, path: str, params: Mapping[str, str | float]
    ) -> list[dict[str, object]]:
        import httpx

        query = params["query"]
        try:
            response = client.get(path, params=dict(params))
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricSourceError(f"Prometheus {self.url} unreachable: query {query!r}: {exc}") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricSourceError(
                f"Prometheus {self.url}: query {query!r} failed ({response.status_code}): {body.get('error')}"
            )
        result = body["data"]["result"]
        return result if isinstance(result, list) else []

    def range_sum(self, query: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        """`query` over [start, end] every `step` seconds, summed over its series per timestamp, oldest
        first (NaN and infinite values left out); MetricSourceError when Prometheus cannot answer."""
        import httpx

        params: dict[str, str | float] = {"query": query, "start": start, "end": end, "step": step}
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            series = self._get(client, "/api/v1/query_range", params)
        sums: dict[float, float] = {}
        for s in series:
            for at, value in s["values"]:  # type: ignore[attr-defined]
                number = float(value)
                if math.isfinite(number):
                    sums[float(at)] = sums.get(float(at), 0.0) + number
        return sorted(sums.items())

    def measure(self, window: Window, template: AnalysisTemplate) -> Samples:
        import httpx

        step = (window.end - window.start) / template.samples_per_interval
        values = {
            "service": window.service,
            "track": self.track_labels[window.track],
            "namespace": window.namespace,
            "ref": window.ref,
            "interval": promql_duration(window.end - window.start),
            "step": promql_duration(step),
        }
        samples: Samples = {}
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            for metric in template.metrics:
                if metric.kind == "rate":
                    if not (metric.numerator_query and metric.denominator_query and metric.numerator):
                        raise MetricSourceError(
                            f"analysis template: metric {metric.name}: no Prometheus queries"
                        )
                    for name, query in (
                        (metric.numerator, metric.numerator_query),
                        (metric.denominator, metric.denominator_query),
                    ):
                        assert name is not None
                        series = self._get(
                            client,
                            "/api/v1/query",
                            {"query": render_query(query, **values), "time": window.end},
                        )
                        counts = [float(s["value"][1]) for s in series]  # type: ignore[index]
                        total = sum(c for c in counts if math.isfinite(c))
                        if series:  # no series at all: no traffic seen, the judge calls it NoData
                            samples[name] = [total]
                else:
                    if not metric.query:
                        raise MetricSourceError(
                            f"analysis template: metric {metric.name}: no Prometheus query"
                        )
                    series = self._get(
                        client,
                        "/api/v1/query_range",
                        {
                            "query": render_query(metric.query, **values),
                            "start": window.start + step,
                            "end": window.end,
                            "step": step,
                        },
                    )
                    points = [float(v) for s in series for _, v in s["values"]]  # type: ignore[attr-defined]
                    finite = [p for p in points if math.isfinite(p)]  # NaN: no requests in that step
                    if finite:
                        samples[metric.name] = finite
        return samples


class MetricFileSource:
    """Metric files (CSV timestamp,metric,value) for offline use: the stable and canary file of one
    service; the analysis's i-th interval is each file's i-th timestamp."""

    def __init__(self, baseline: Path, canary: Path) -> None:
        self.paths: dict[Track, Path] = {"stable": Path(baseline), "canary": Path(canary)}
        self._intervals: dict[Track, list[Samples]] = {}

    def _load(self, track: Track) -> list[Samples]:
        if track not in self._intervals:
            rows = read_metric_file(self.paths[track])
            stamps = sorted({t for series in rows.values() for t, _ in series})
            by_stamp: dict[str, Samples] = {t: {} for t in stamps}
            for metric, series in rows.items():
                for t, value in series:
                    by_stamp[t].setdefault(metric, []).append(value)
            self._intervals[track] = [by_stamp[t] for t in stamps]
        return self._intervals[track]

    def measure(self, window: Window, template: AnalysisTemplate) -> Samples:
        intervals = self._load(window.track)
        if window.index >= len(intervals):
            raise MetricSourceError(
                f"metric file {self.paths[window.track]}: no interval {window.index + 1} "
                f"(the file has {len(intervals)})"
            )
        return intervals[window.index]


class CanaryAnalyst:
    """Runs one AnalysisRun per rollout step: every `interval`, measure both tracks, judge the cumulative
    window, assess the run; return on rollback or pause at once, else after `count` measured intervals.
    A source that fails is an error interval (Argo's consecutiveErrorLimit), never an exception."""

    def __init__(
        self,
        template: AnalysisTemplate,
        source: MetricSource,
        clock: Clock | None = None,
        namespaces: Mapping[str, str] | None = None,
        default_namespace: str = "default",
    ) -> None:
        self.template = template
        self.source = source
        self.clock = clock or SystemClock()
        self.namespaces = dict(namespaces or {})
        self.default_namespace = default_namespace

    def analyse(
        self, service: str, environment: str, stable_ref: str, canary_ref: str, step: int
    ) -> RunVerdict:
        """The verdict of analysis step `step` of `service` in `environment` (`namespaces` maps an
        environment to its Kubernetes namespace; else `default_namespace`), `canary_ref` against
        `stable_ref`, with every interval's per-metric statistics as evidence."""
        namespace = self.namespaces.get(environment, self.default_namespace)
        interval = float(self.template.interval_seconds)
        start = self.clock.now()
        baseline: Samples = {}
        canary: Samples = {}
        verdicts: list[IntervalVerdict] = []
        measured = 0
        run = RunVerdict("continue", "not started")
        # Measured intervals stop at `count`; errors in between extend the run, and too many in a row
        # pause it, so this loop always ends.
        for index in range(self.template.count * (self.template.consecutive_error_limit + 1)):
            end = start + (index + 1) * interval
            self.clock.sleep(end - self.clock.now())
            try:
                stable_now = self.source.measure(
                    Window(service, namespace, "stable", stable_ref, measured, end - interval, end),
                    self.template,
                )
                canary_now = self.source.measure(
                    Window(service, namespace, "canary", canary_ref, measured, end - interval, end),
                    self.template,
                )
            except MetricSourceError as exc:
                verdicts.append(source_error(str(exc)))
            else:
                measured += 1
                for into, new in ((baseline, stable_now), (canary, canary_now)):
                    for metric, values in new.items():
                        into.setdefault(metric, []).extend(values)
                verdicts.append(judge_interval(baseline, canary, self.template))
            run = assess_run(verdicts, self.template)
            if run.action != "continue":
                return RunVerdict(run.action, f"step {step}: {run.why}", run.intervals)
        return RunVerdict("pause", f"step {step}: analysis did not finish: {run.why}", run.intervals)
