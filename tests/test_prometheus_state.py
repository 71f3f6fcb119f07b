"""Production's state read from a real Prometheus scraping a real exporter: hourly requests and errors of
a service by the HTTP API's query_range, and a clear error when Prometheus is away."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from agents.environment import MetricsUnavailable, read_prometheus
from tests.conftest import free_port

pytest_plugins = ["tests.prometheus_server"]  # prometheus_server


@pytest.fixture
def prometheus(prometheus_server):
    """Prometheus scraping a prometheus_client exporter that counts 100 requests/s of `api`, 2% failing."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    requests = Counter("http_requests", "requests", ["service", "code"], registry=registry)
    exporter_port = free_port()
    server, _thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    try:
        requests.labels("api", "200").inc(98)
        requests.labels("api", "500").inc(2)
        url = prometheus_server.start([f"127.0.0.1:{exporter_port}"])
        prometheus_server.wait_for_series(url, "http_requests_total", 2)
        for _ in range(8):  # a few more scrapes, so increase() has points to work with
            requests.labels("api", "200").inc(98)
            requests.labels("api", "500").inc(2)
            time.sleep(0.5)
        yield url
    finally:
        server.shutdown()


def test_requests_and_errors_per_hour_come_from_prometheus(prometheus):
    end = datetime.now(UTC) + timedelta(seconds=1)
    frame = read_prometheus(
        prometheus,
        ["api"],
        'sum(increase(http_requests_total{{service="{service}"}}[1h]))',
        'sum(increase(http_requests_total{{service="{service}",code=~"5.."}}[1h]))',
        end,
        days=1 / 24,
    )
    assert list(frame.columns) == ["service", "timestamp", "requests", "errors"]
    assert len(frame) >= 1 and set(frame["service"]) == {"api"}
    newest = frame.iloc[-1]
    assert newest["requests"] > 0
    assert newest["errors"] / newest["requests"] == pytest.approx(0.02, rel=0.05)


def test_an_unreachable_prometheus_is_named_in_the_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MetricsUnavailable, match=r"127\.0\.0\.1.*query"):
        read_prometheus(url, ["api"], "up{{service='{service}'}}", "up", datetime.now(UTC))
