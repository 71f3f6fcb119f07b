"""A real Prometheus for tests (Debian's `prometheus` binary; `make test` installs it as root), started
on a free port with its TSDB in the test's temp dir and scraping the targets the test names.

Use it from a test module with `pytest_plugins = ["tests.prometheus_server"]`, then ask for
`prometheus_server`: a `PrometheusServers` whose `start(targets, scrape_interval="1s") -> url` starts one
(targets are `host:port` of exporters the test runs) and `wait_for_series(url, query, n)` polls until a
query returns n series. Every Prometheus started is stopped after the test; the test is skipped where the
binary is missing. Import the class only under `if TYPE_CHECKING:` (pytest rewrites the plugin's asserts)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


class PrometheusServers:
    """Starts Prometheus processes for one test and stops them all at its end."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, targets: list[str], scrape_interval: str = "1s") -> str:
        """A Prometheus scraping `targets` every `scrape_interval`; its base URL."""
        home = self.home / f"prometheus-{len(self.processes)}"
        home.mkdir()
        config = home / "prometheus.yml"
        listed = ", ".join(f"'{t}'" for t in targets)
        config.write_text(
            f"global: {{scrape_interval: {scrape_interval}, evaluation_interval: {scrape_interval}}}\n"
            "scrape_configs:\n"
            f"  - job_name: app\n    static_configs: [{{targets: [{listed}]}}]\n"
        )
        port = free_port()
        self.processes.append(
            subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={home / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        return f"http://127.0.0.1:{port}"

    @staticmethod
    def wait_for_series(url: str, query: str, n: int, timeout_s: float = 30.0) -> None:
        """Poll Prometheus until `query` returns at least `n` series; fail the test on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=1)
                if response.status_code == 200 and len(response.json()["data"]["result"]) >= n:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"Prometheus {url}: {query!r} did not return {n} series in {timeout_s:.0f} s")


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusServers]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "prometheus is not installed (Debian package prometheus; `make test` installs it as root)"
        )
    servers = PrometheusServers(binary, tmp_path)
    try:
        yield servers
    finally:
        for process in servers.processes:
            process.terminate()
            process.wait(timeout=10)
