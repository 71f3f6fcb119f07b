"""The decisions page in a real headless Chromium (Debian's `chromium`), driven over the DevTools protocol
against the agents service under uvicorn: log in, approve one decision, override another, read the audit
log. Set AWO_WRITE_SCREENSHOTS=1 to refresh docs/decisions_page.png (the README's screenshot)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from agents.engine import audit_log
from tests.conftest import free_port
from tests.test_pages import APPROVER, LEAD, decide, mined_repository, service_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "decisions_page.png"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian package `chromium`)")


class Browser:
    """One page of a headless Chromium, over the DevTools protocol's websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arriving in between are not needed: pages are awaited by polling
            reply = json.loads(self._socket.recv(timeout=30))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, path: str, timeout_s: float = 20.0) -> str:
        """Waits until the page at `path` has loaded; returns its text."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.evaluate("[location.pathname + location.search, document.readyState]")
            if state[0] == path and state[1] == "complete":
                return str(self.evaluate("document.body.innerText"))
            time.sleep(0.05)
        raise AssertionError(f"the page never reached {path} (at {state})")

    def open(self, url: str, path: str) -> str:
        self.call("Page.navigate", url=url)
        return self.wait_for(path)

    def submit(self, form: str, fields: dict[str, str]) -> None:
        """Types into the fields of the form matched by CSS `form` and presses its button."""
        for name, value in fields.items():
            self.evaluate(
                f"document.querySelector({json.dumps(form)}).elements[{json.dumps(name)}].value = "
                f"{json.dumps(value)}"
            )
        self.evaluate(f"document.querySelector({json.dumps(form)}).querySelector('button').click()")

    def screenshot(self) -> bytes:
        """The whole page as PNG, beyond the window's height."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Browser]:
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",  # tests may run as root in a container, where the sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail(f"chromium did not open its DevTools port (exit code {process.poll()})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.load(response)
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as socket:
            browser = Browser(socket)
            browser.call("Page.enable")
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield browser
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any, str, str]]:
    """The agents service under uvicorn on a free port, with one senior_review and one block decision."""
    import uvicorn

    from agents.service import create_agent_app

    mined = mined_repository(tmp_path / "world")
    settings = service_settings(mined[1], tmp_path)
    review_id, _ = decide(settings, mined, 0.5)
    block_id, _ = decide(settings, mined, 0.95)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_agent_app(settings), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings, review_id, block_id
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_person_logs_in_approves_one_decision_and_overrides_another(chromium, served, tmp_path):
    url, settings, review_id, block_id = served
    chromium.open(f"{url}/ui/login", "/ui/login")
    chromium.submit("form.act", {"token": APPROVER})
    listing = chromium.wait_for("/ui/decisions")
    assert review_id in listing and block_id in listing and "signed in as approver" in listing
    assert chromium.evaluate("document.cookie") == ""  # HttpOnly: the session is out of the page's reach

    page = chromium.open(f"{url}/ui/decisions/{block_id}", f"/ui/decisions/{block_id}")
    assert "Explanation" in page and "Test plan" in page and "Rollout plan" in page
    shot = chromium.screenshot()
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
    (tmp_path / "decisions_page.png").write_bytes(shot)
    if os.environ.get("AWO_WRITE_SCREENSHOTS") == "1":
        SCREENSHOT.write_bytes(shot)

    chromium.open(f"{url}/ui/decisions/{review_id}", f"/ui/decisions/{review_id}")
    chromium.submit("form#approve", {"reason": "migration reviewed with the DBA"})
    assert "approval recorded" in chromium.wait_for(f"/ui/decisions/{review_id}?done=approval")

    chromium.submit("header form", {})  # log out, then in as the lead, who may lift a block
    chromium.wait_for("/ui/login")
    chromium.submit("form.act", {"token": LEAD})
    chromium.wait_for("/ui/decisions")
    chromium.open(f"{url}/ui/decisions/{block_id}", f"/ui/decisions/{block_id}")
    chromium.submit("form#override", {"gate": "senior_review", "reason": "freeze lifted by the lead"})
    assert "override recorded" in chromium.wait_for(f"/ui/decisions/{block_id}?done=override")

    overrides = [
        (r["decision_id"], r["who"], r["from_gate"], r["to_gate"], r["reason"])
        for r in audit_log(settings).records()
        if r["kind"] == "override"
    ]
    assert overrides == [
        (
            review_id,
            "approver",
            "senior_review",
            "senior_review",
            "approved: migration reviewed with the DBA",
        ),
        (block_id, "lead", "block", "senior_review", "freeze lifted by the lead"),
    ]
    audit = chromium.open(f"{url}/ui/audit", "/ui/audit")
    assert "Chain verifies: 4 records" in audit and "approved by approver" in audit
    assert "No decision waits" in chromium.open(f"{url}/ui/decisions", "/ui/decisions")
