"""A real local OpenAI-compatible LLM for tests: llama-cpp-python's server with SmolLM2-135M-Instruct, run
from the cached venv that `scripts/llm.sh build && scripts/llm.sh install` prepares (outside the repo).

Use it from a test module with `pytest_plugins = ["tests.llm_server"]`, then ask for `llm_endpoint`, a
`(base_url, model_name)` pair; `base_url` ends in `/v1`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

LLM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llm.sh"
READY_TIMEOUT_S = 60.0
CACHE_NOTE = "once per machine, 10-16 min on 2 cores, cached in $AWO_CACHE_DIR or ~/.cache/awo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _model_name(base_url: str) -> str | None:
    """The id the server lists under /v1/models, or None while it is not answering yet."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
            return str(json.load(response)["data"][0]["id"])
    except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError):
        return None


@pytest.fixture(scope="session")
def llm_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Start one server per test process (each xdist worker has its own, ~200 MB each) and stop it after."""
    found = subprocess.run([str(LLM_SCRIPT), "model-path"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"local LLM not available: {found.stderr.strip()} ({CACHE_NOTE})")
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("llm") / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(LLM_SCRIPT), "serve", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "AWO_LLM_THREADS": os.environ.get("AWO_LLM_THREADS", "2")},
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        model = _model_name(base_url)
        while model is None:
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-2000:]
                pytest.fail(f"local LLM server did not answer on {base_url}/models:\n{tail}")
            time.sleep(0.2)
            model = _model_name(base_url)
        yield base_url, model
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
