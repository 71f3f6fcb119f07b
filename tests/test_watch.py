"""The bake-time watch against a real Prometheus scraping an exporter the test drives: quiet while the
service is steady or its errors drop, a 5x error spike acts as the policy says, an unreachable Prometheus
pauses the watch, and only regressions beyond the tolerance count."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from agents.anomaly import DetectorConfig
from agents.executor import DryRunExecutor
from agents.judge import AnalysisTemplate, MetricSpec
from agents.monitor import ManualClock, MetricSourceError, PrometheusSource
from agents.planner import Task
from agents.policy import Monitoring
from agents.watch import Anomaly, StreamWatcher, counts
from tests.conftest import free_port

if TYPE_CHECKING:
    from tests.prometheus_server import PrometheusServers

pytest_plugins = ["tests.prometheus_server"]

ERRORS = MetricSpec(
    name="error_rate",
    kind="rate",
    numerator="errors",
    denominator="requests",
    numerator_query='sum(increase(http_requests_total{service="{service}",track="{track}",code="500"}[{interval}]))',
    denominator_query='sum(increase(http_requests_total{service="{service}",track="{track}"}[{interval}]))',
    tolerance=1.0,  # the watch counts an alarm only beyond twice the recent level
    critical=True,
)
TEMPLATE = AnalysisTemplate(metrics=[ERRORS], interval="1s", count=3, consecutive_error_limit=2)
HISTORY = 12  # intervals of warm-up: the detector learns from the first 8 (a test cannot wait 300)
DETECTOR = DetectorConfig(learn=8)


class Service:
    """An exporter of `http_requests_total{service,code}` (no track label, as pods after a full rollout):
    2,000 requests/s of `shop` at the error rate the test sets."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, start_http_server

        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "requests", ["service", "code"], registry=self.registry)
        self.error_rate = 0.02
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(11)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.wait(0.01):
            errors = int(self._rng.binomial(20, self.error_rate))
            self.requests.labels("shop", "500").inc(errors)
            self.requests.labels("shop", "200").inc(20 - errors)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.shutdown()


@pytest.fixture
def service() -> Iterator[Service]:
    exporter = Service()
    try:
        yield exporter
    finally:
        exporter.close()


def _watch(seconds: int = 5) -> Task:
    return Task.model_validate(
        {
            "id": "watch:shop",
            "kind": "watch",
            "service": "shop",
            "environment": "production",
            "params": {"duration_s": seconds},
        }
    )


def _watcher(url: str, tmp_path: Path, on_anomaly: str = "rollback", clock=None) -> StreamWatcher:
    return StreamWatcher(
        DryRunExecutor(),
        TEMPLATE,
        PrometheusSource(url, timeout_s=2),
        Monitoring(on_anomaly=on_anomaly, history_intervals=HISTORY),  # type: ignore[arg-type]
        tmp_path / "data",
        clock=clock,
        detector=DETECTOR,
    )


def test_steady_and_falling_errors_pass_and_a_5x_spike_rolls_back_with_evidence(
    prometheus_server: PrometheusServers, service: Service, tmp_path: Path
) -> None:
    url = prometheus_server.start([f"127.0.0.1:{service.port}"], scrape_interval="100ms")
    prometheus_server.wait_for_series(url, 'http_requests_total{service="shop"}', 2)
    time.sleep(HISTORY + 1)  # the history the warm-up reads
    watcher = _watcher(url, tmp_path)

    steady = watcher.run(_watch())

    assert steady.status == "succeeded", steady.detail
    assert steady.detail == "watched 5s: 1 metrics, no anomaly"
    service.error_rate = 0.0  # fewer errors than ever: unusual, but no regression
    falling = watcher.run(_watch())
    assert falling.status == "succeeded", falling.detail

    service.error_rate = 0.10
    spiked = watcher.run(_watch())

    assert spiked.status == "failed"
    assert spiked.detail.startswith("anomaly in shop: error_rate ")
    evidence = watcher.anomalies["watch:shop"][-1]
    assert evidence["metric"] == "error_rate" and evidence["value"] > 2 * evidence["level"]
    assert evidence["score"] >= 0.3


def test_an_unreachable_prometheus_pauses_the_watch_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _watcher(url, tmp_path, clock=ManualClock(1_800_000_000)).run(_watch())
    assert result.status == "paused"
    assert "watch cannot read its metrics" in result.detail and url in result.detail


class Outage(PrometheusSource):
    """A Prometheus answering steady 2 % errors on the 1 s grid, except while `down` (Unix seconds, end
    exclusive) covers the end of a query: then it fails as an unreachable one does."""

    def __init__(self, down: tuple[float, float]) -> None:
        super().__init__("http://prometheus.example:9090")
        self.down = down
        self._rng = np.random.default_rng(5)

    def range_sum(self, query: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
        if self.down[0] <= end < self.down[1]:
            raise MetricSourceError(f"Prometheus {self.url} unreachable: query {query!r}: refused")
        grid = np.arange(start, end + step / 2, step)
        if 'code="500"' in query:
            return [(float(t), float(self._rng.binomial(2000, 0.02))) for t in grid]
        return [(float(t), 2000.0) for t in grid]


@pytest.mark.parametrize(
    ("failed_ticks", "status"), [(2, "succeeded"), (3, "paused")], ids=["at-the-limit", "beyond"]
)
def test_source_failures_in_a_row_pause_the_watch_only_beyond_the_limit(
    tmp_path: Path, failed_ticks: int, status: str
) -> None:
    start = 1_800_000_000.0
    source = Outage(down=(start + 2, start + 2 + failed_ticks))
    watcher = StreamWatcher(
        DryRunExecutor(),
        TEMPLATE,
        source,
        Monitoring(history_intervals=HISTORY),
        tmp_path,
        clock=ManualClock(start),
        detector=DETECTOR,
    )

    result = watcher.run(_watch(seconds=10))

    assert result.status == status, result.detail
    if status == "paused":
        assert result.detail.startswith("watch paused: metric source failed 3 times in a row: ")
        assert source.url in result.detail
    assert watcher.anomalies == {}


def test_the_policy_decides_what_an_anomaly_does(tmp_path: Path) -> None:
    anomaly = Anomaly("error_rate", 1_800_000_000, 0.1, 0.02, 0.97)
    url = "http://127.0.0.1:9"
    assert _watcher(url, tmp_path)._act(_watch(), anomaly).status == "failed"
    assert _watcher(url, tmp_path, "pause")._act(_watch(), anomaly).status == "paused"
    recorded = _watcher(url, tmp_path, "incident")._act(_watch(), anomaly)
    assert recorded.status == "succeeded" and "incident awo-watch-shop-1800000000 recorded" in recorded.detail
    rows = list(csv.DictReader((tmp_path / "data" / "feedback" / "incidents.csv").open()))
    assert [(r["incident_id"], r["service"], r["severity"]) for r in rows] == [
        ("awo-watch-shop-1800000000", "shop", "high")
    ]
    assert "error_rate 0.1 against a recent level of 0.02" in rows[0]["summary"]


def test_only_a_regression_beyond_the_tolerance_counts() -> None:
    recent = [0.02, 0.021, 0.019, 0.02]
    assert counts(ERRORS, 0.06, recent) == pytest.approx(0.02)  # 3x: beyond +100%
    assert counts(ERRORS, 0.035, recent) is None  # +75%: inside the tolerance
    assert counts(ERRORS, 0.0, recent) is None  # a drop is no regression of an error rate
    conversion = MetricSpec(name="conversion", bad="decrease", tolerance=0.2)
    assert counts(conversion, 0.5, [1.0, 1.0]) == 1.0
    assert counts(conversion, 1.5, [1.0, 1.0]) is None
    assert counts(ERRORS, 0.5, []) is None  # nothing to compare with yet


def test_other_tasks_go_to_the_inner_executor(tmp_path: Path) -> None:
    inner = DryRunExecutor()
    watcher = StreamWatcher(inner, TEMPLATE, PrometheusSource("http://127.0.0.1:9"), Monitoring(), tmp_path)
    task = Task.model_validate(
        {"id": "deploy:shop", "kind": "deploy", "service": "shop", "environment": "production",
         "params": {"ref": "v2"}}
    )  # fmt: skip
    assert watcher.run(task).status == "succeeded"
    assert inner.running == {("production", "shop"): "v2"}
    assert watcher.calls == ["deploy:shop"]  # the inner executor's state reads through


def test_a_short_history_is_named_because_the_detector_cannot_alarm_yet(tmp_path: Path) -> None:
    start = 1_800_000_000.0
    watcher = StreamWatcher(
        DryRunExecutor(),
        TEMPLATE,
        Outage(down=(0, 0)),
        Monitoring(history_intervals=20),
        tmp_path,
        clock=ManualClock(start),
    )  # the default detector learns from 150 points

    result = watcher.run(_watch(seconds=3))

    assert result.status == "succeeded"
    assert result.detail == (
        "watched 3s: 1 metrics, no anomaly; error_rate had 21 points of history, "
        "the detector alarms only after 150"
    )


def test_settings_without_prometheus_keep_the_inner_executor(tmp_path: Path) -> None:
    from agents.policy import load_policy
    from agents.watch import watcher_from_settings
    from features.settings import load_settings

    inner = DryRunExecutor()
    policy = load_policy()
    assert watcher_from_settings(load_settings(data_dir=tmp_path), policy, inner) is inner

    settings = load_settings(
        data_dir=tmp_path, prometheus_url="http://prometheus:9090/", kube_namespace="shop-prod"
    )
    watcher = watcher_from_settings(settings, policy, inner)
    assert isinstance(watcher, StreamWatcher)
    assert (watcher.inner, watcher.namespace, watcher.data_dir) == (inner, "shop-prod", tmp_path)
    assert watcher.source.url == "http://prometheus:9090"
    assert watcher.monitoring == policy.monitoring
    assert [m.name for m in watcher.template.metrics]  # the packaged template


def test_the_monitoring_policy_is_validated_and_rolls_back_by_default() -> None:
    from pydantic import ValidationError

    from agents.policy import load_policy

    assert load_policy().monitoring == Monitoring(on_anomaly="rollback", history_intervals=300)
    with pytest.raises(ValidationError, match="on_anomaly"):
        Monitoring(on_anomaly="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="history_intervals"):
        Monitoring(history_intervals=0)
    with pytest.raises(ValidationError, match="extra"):
        Monitoring.model_validate({"on_anomaly": "pause", "threshold": 0.1})  # the detector's, not policy
