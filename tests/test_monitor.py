"""The monitoring agent against a real Prometheus scraping an in-process shop exporter whose canary error
rate and latency the test sets: a healthy canary promotes, a 5x error spike rolls back with the failing
critical metric in the evidence, and a Prometheus that is down pauses after the error limit, named."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from agents.judge import AnalysisTemplate, MetricSpec, load_template, run_evidence
from agents.monitor import CanaryAnalyst, ManualClock, MetricFileSource, PrometheusSource, Window
from tests.conftest import free_port

if TYPE_CHECKING:
    from tests.prometheus_server import PrometheusServers

pytest_plugins = ["tests.prometheus_server"]  # prometheus_server

ERRORS = MetricSpec(
    name="error_rate",
    kind="rate",
    numerator="errors",
    denominator="requests",
    numerator_query='sum(increase(http_requests_total{service="{service}",track="{track}",code="500"}[{interval}]))',
    denominator_query='sum(increase(http_requests_total{service="{service}",track="{track}"}[{interval}]))',
    tolerance=0.2,
    alpha=0.001,
    critical=True,
    weight=3,
)
LATENCY = MetricSpec(
    name="latency_p99_ms",
    query="1000 * histogram_quantile(0.99, sum by (le) "
    '(rate(http_request_duration_seconds_bucket{service="{service}",track="{track}"}[{step}])))',
    tolerance=0.1,
    alpha=0.001,
    critical=True,
    weight=2,
)
# A seconds-scale AnalysisRun: three 2 s intervals, four latency samples each (scrapes every 100 ms).
FAST = AnalysisTemplate(
    metrics=[ERRORS, LATENCY], interval="2s", count=3, samples_per_interval=4, consecutive_error_limit=2
)


class Shop:
    """An exporter of `http_requests_total{service,track,code}` and a latency histogram for the stable and
    canary tracks of `cart`, serving 500 requests/s on each; the test sets each track's error rate and
    median latency."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests", "requests", ["service", "track", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "latency",
            ["service", "track"],
            buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
            registry=self.registry,
        )
        self.error_rate = {"stable": 0.02, "canary": 0.02}
        self.median_s = {"stable": 0.06, "canary": 0.06}
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._stop = threading.Event()
        self._rng = np.random.default_rng(7)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.wait(0.02):  # 10 requests per track every 20 ms
            for track in ("stable", "canary"):
                errors = int(self._rng.binomial(10, self.error_rate[track]))
                self.requests.labels("cart", track, "500").inc(errors)
                self.requests.labels("cart", track, "200").inc(10 - errors)
                for seconds in self._rng.lognormal(np.log(self.median_s[track]), 0.3, 10):
                    self.latency.labels("cart", track).observe(float(seconds))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.shutdown()


@pytest.fixture
def shop() -> Iterator[Shop]:
    exporter = Shop()
    try:
        yield exporter
    finally:
        exporter.close()


@pytest.fixture
def prometheus(prometheus_server: PrometheusServers, shop: Shop) -> str:
    url = prometheus_server.start([f"127.0.0.1:{shop.port}"], scrape_interval="100ms")
    prometheus_server.wait_for_series(url, 'http_requests_total{service="cart"}', 4)
    return url


def test_a_healthy_canary_is_promoted(prometheus: str) -> None:
    run = CanaryAnalyst(FAST, PrometheusSource(prometheus)).analyse("cart", "prod", "v1", "v2", step=1)
    assert run.action == "promote", run.why
    assert len(run.intervals) == 3 and all(v.verdict == "pass" for v in run.intervals)
    errors = run.intervals[-1].results[0]
    assert errors.test == "fisher" and errors.n > 1500  # about 3 x 1,000 requests on each track
    assert errors.baseline == pytest.approx(0.02, abs=0.01) and errors.canary == pytest.approx(0.02, abs=0.01)


def test_a_five_fold_error_spike_on_the_canary_rolls_back_with_the_evidence(
    prometheus: str, shop: Shop
) -> None:
    shop.error_rate["canary"] = 0.10
    run = CanaryAnalyst(FAST, PrometheusSource(prometheus)).analyse("cart", "prod", "v1", "v2", step=2)
    assert run.action == "rollback" and "error_rate" in run.why and run.why.startswith("step 2:")
    assert len(run.intervals) == 1  # returned at the first failed interval, as an AnalysisRun does
    evidence = run_evidence(run)["intervals"][0]
    assert evidence["failed_critical"] == ["error_rate"]
    errors = next(r for r in evidence["results"] if r["name"] == "error_rate")
    assert errors["classification"] == "High" and errors["canary"] > 3 * errors["baseline"]


def test_a_slower_canary_fails_on_latency(prometheus: str, shop: Shop) -> None:
    shop.median_s["canary"] = 0.12
    run = CanaryAnalyst(FAST, PrometheusSource(prometheus)).analyse("cart", "prod", "v1", "v2", step=1)
    assert run.action == "rollback" and "latency_p99_ms" in run.why


def test_a_prometheus_that_is_down_pauses_after_the_error_limit_and_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    clock = ManualClock(1_800_000_000)
    run = CanaryAnalyst(FAST, PrometheusSource(url, timeout_s=2), clock).analyse(
        "cart", "prod", "v1", "v2", 1
    )
    assert run.action == "pause"
    assert [v.verdict for v in run.intervals] == ["error"] * 3  # consecutive_error_limit 2, then the third
    assert url in run.why and "unreachable" in run.why
    assert clock.now() == 1_800_000_000 + 3 * 2  # it waited out each interval on the injected clock


def _metric_file(path: Path, errors: list[int], requests: int = 1000) -> Path:
    rows = ["timestamp,metric,value"]
    for i, e in enumerate(errors):
        stamp = f"2026-11-24T10:{i:02d}:00Z"
        rows += [f"{stamp},errors,{e}", f"{stamp},requests,{requests}"]
        rows += [f"{stamp},latency_p99_ms,{v}" for v in (100, 110, 120, 105)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_metric_files_replay_an_analysis_offline(tmp_path: Path) -> None:
    base = _metric_file(tmp_path / "stable.csv", [20, 21, 19])
    clock = ManualClock()
    healthy = CanaryAnalyst(
        FAST, MetricFileSource(base, _metric_file(tmp_path / "ok.csv", [22, 18, 20])), clock
    )
    assert healthy.analyse("cart", "prod", "v1", "v2", 1).action == "promote"
    spike = MetricFileSource(base, _metric_file(tmp_path / "spike.csv", [20, 100, 100]))
    run = CanaryAnalyst(FAST, spike, clock).analyse("cart", "prod", "v1", "v2", 1)
    assert (run.action, len(run.intervals)) == ("rollback", 2)  # the first interval was healthy


def test_a_metric_file_too_short_for_the_count_pauses_naming_the_file(tmp_path: Path) -> None:
    base = _metric_file(tmp_path / "stable.csv", [20, 21, 19])
    short = MetricFileSource(base, _metric_file(tmp_path / "short.csv", [20]))
    run = CanaryAnalyst(FAST, short, ManualClock()).analyse("cart", "prod", "v1", "v2", 1)
    assert run.action == "pause" and "short.csv: no interval 2" in run.why


def test_the_default_templates_queries_are_valid_promql(prometheus: str) -> None:
    template = load_template()
    now = time.time()
    window = Window("cart", "prod", "canary", "v2", 0, now - 60, now)
    # The shop has no namespace label, so the series are empty; a malformed query would raise.
    assert PrometheusSource(prometheus).measure(window, template) == {}


def test_a_canary_track_label_without_series_pauses_and_never_promotes(prometheus: str) -> None:
    source = PrometheusSource(prometheus, track_labels={"canary": "preview"})  # the shop has no preview pods
    run = CanaryAnalyst(FAST, source).analyse("cart", "prod", "v1", "v2", step=1)
    assert run.action == "pause" and "inconclusive" in run.why
    assert {r.classification for r in run.intervals[0].results} == {"NoData"}
