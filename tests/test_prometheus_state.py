"""Production's state read from a real Prometheus scraping a real exporter: hourly requests and errors of
a service by the HTTP API's query_range, and a clear error when Prometheus is away."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from agents.environment import MetricsUnavailable, read_prometheus
from tests.conftest import free_port


@pytest.fixture
def prometheus(tmp_path):
    """Prometheus scraping a prometheus_client exporter that counts 100 requests/s of `api`, 2% failing."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "prometheus is not installed (Debian package prometheus; `make test` installs it as root)"
        )
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    requests = Counter("http_requests", "requests", ["service", "code"], registry=registry)
    exporter_port = free_port()
    server, _thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: app\n    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            requests.labels("api", "200").inc(98)
            requests.labels("api", "500").inc(2)
            try:
                query = httpx.get(f"{url}/api/v1/query", params={"query": "http_requests_total"}, timeout=1)
                if query.status_code == 200 and len(query.json()["data"]["result"]) == 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        for _ in range(8):  # a few more scrapes, so increase() has points to work with
            requests.labels("api", "200").inc(98)
            requests.labels("api", "500").inc(2)
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
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
