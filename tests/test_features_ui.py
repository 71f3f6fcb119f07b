"""`awo features ui` (Feast's own UI on the project's registry) and the `feast` CLI line of the README, on a
real applied registry under a temporary data root."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
AWO = ROOT / ".venv" / "bin" / "awo"
VIEWS = {
    "commit_change",
    "commit_history",
    "change_risk_v1_vector",
    "commit_code",
    "author_history",
    "file_history",
    "deployment_change",
    "service_health",
}


def awo_env(data_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWO_")}
    return {**env, "AWO_DATA_DIR": str(data_root), "PATH": f"{AWO.parent}{os.pathsep}{env.get('PATH', '')}"}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose Feast registry has every entity, view and service applied (no sources built)."""
    from features.settings import load_settings
    from features.store import apply, open_store

    data_root = tmp_path_factory.mktemp("ui") / "data"
    apply(open_store(load_settings(data_dir=data_root)))
    return data_root


def test_ui_on_a_data_root_never_applied_says_to_apply_first(tmp_path):
    proc = subprocess.run(
        [str(AWO), "features", "ui"], env=awo_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: the feature registry {tmp_path / 'feast' / 'registry.db'} is not applied yet: "
        "run `awo features apply` first"
    )


def test_ui_serves_feasts_app_and_our_feature_views(applied):
    port = free_port()
    server = subprocess.Popen(
        [str(AWO), "features", "ui", "--port", str(port)],
        env=awo_env(applied),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # feast and uvicorn import for a while on a loaded machine
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the UI did not answer /health"
            time.sleep(0.5)
        page = httpx.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and "<title>Feast" in page.text
        projects = httpx.get(f"{base}/projects-list.json", timeout=10).json()["projects"]
        assert [(p["id"], p["registryPath"]) for p in projects] == [("awo", "/api/v1")]
        listed = httpx.get(f"{base}/api/v1/feature_views", params={"project": "awo"}, timeout=30)
        assert listed.status_code == 200
        assert {v["spec"]["name"] for v in listed.json()["featureViews"]} == VIEWS
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.stdout is not None
    assert (
        f"Feast UI on {base}/ for {applied / 'feast' / 'registry.db'} (8 feature views"
        in server.stdout.read()
    )


def test_the_readme_feast_cli_line_lists_our_feature_views(applied):
    line = (
        'feast -c "$(awo features repo-path)" -f features/feature_repo/feature_store.yaml feature-views list'
    )
    proc = subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=awo_env(applied), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    listed = {row.split()[0] for row in proc.stdout.splitlines()[1:] if row.strip()}
    assert listed == VIEWS
