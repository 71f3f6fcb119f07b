"""Git-host webhooks end to end: a signed delivery to the agents service is queued, the worker fetches the
pushed commits from a real bare origin into the configured checkout, mines them, decides, and reports to a
local HTTP server standing for the host's API, whose recorded payloads are checked against each host's
documented format. Also: bad signatures, replays, bursts, restarts and crashes."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from agents.engine import audit_log
from agents.hosts import STATE_OF_GATE, HostApiError
from agents.service import create_agent_app
from agents.webhooks import HostEvent, JobResult, WebhookQueue, hmac_signature
from features.settings import Settings, load_settings
from pipelines.mine import mine_repository
from pipelines.webhook_job import webhook_handler
from tests.conftest import DAY, T0, TinyRepo, free_port, git

GITHUB_SECRET, GITLAB_TOKEN, BITBUCKET_SECRET = "gh-secret-0123", "gl-token-0123", "bb-secret-0123"

# The request bodies each host documents (see the docstrings in agents/hosts.py for the pages).
GITHUB_STATUS = {  # POST /repos/{owner}/{repo}/statuses/{sha}
    "type": "object",
    "required": ["state"],
    "additionalProperties": False,
    "properties": {
        "state": {"enum": ["error", "failure", "pending", "success"]},
        "target_url": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"], "maxLength": 140},
        "context": {"type": "string"},
    },
}
GITLAB_STATUS = {  # POST /projects/:id/statuses/:sha
    "type": "object",
    "required": ["state"],
    "additionalProperties": False,
    "properties": {
        "state": {"enum": ["pending", "running", "success", "failed", "canceled", "skipped"]},
        "ref": {"type": "string"},
        "name": {"type": "string"},
        "context": {"type": "string"},
        "target_url": {"type": "string"},
        "description": {"type": "string"},
        "coverage": {"type": "number"},
        "pipeline_id": {"type": "integer"},
    },
}
GITLAB_NOTE = {  # POST /projects/:id/merge_requests/:merge_request_iid/notes
    "type": "object",
    "required": ["body"],
    "additionalProperties": False,
    "properties": {
        "body": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
        "created_at": {"type": "string"},
        "internal": {"type": "boolean"},
    },
}
BITBUCKET_BUILD_STATUS = {  # POST /2.0/repositories/{workspace}/{repo_slug}/commit/{commit}/statuses/build
    "type": "object",
    "required": ["key", "state", "url"],
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string", "minLength": 1},
        "state": {"enum": ["SUCCESSFUL", "FAILED", "INPROGRESS", "STOPPED"]},
        "url": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "refname": {"type": "string"},
    },
}
GITLAB_STATE = {"success": "success", "pending": "pending", "failure": "failed"}
BITBUCKET_STATE = {"success": "SUCCESSFUL", "pending": "INPROGRESS", "failure": "FAILED"}


class HostApi:
    """A local HTTP server standing for a git host's REST API: records every call, answers 201 (or the
    statuses queued in `answers` first)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: list[int] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                api.calls.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body or b"null")}
                )
                code = api.answers.pop(0) if api.answers else 201
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id": 1}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def host_api():
    api = HostApi()
    yield api
    api.server.shutdown()


class World:
    """A bare origin, a developer's clone that pushes to it, and the service's configured checkout."""

    def __init__(self, root: Path, api: HostApi) -> None:
        self.origin = root / "origin.git"
        git(root, "init", "-q", "--bare", "-b", "main", str(self.origin))
        self.dev = TinyRepo(root / "dev")
        git(self.dev.path, "remote", "add", "origin", str(self.origin))
        self.history = [self.commit(f"start {i}", "main") for i in range(3)]
        self.checkout = root / "checkout"
        git(root, "clone", "-q", str(self.origin), str(self.checkout))
        self.settings: Settings = load_settings(
            data_dir=root / "data",
            repositories={"shop": self.checkout},
            github_webhook_secret=GITHUB_SECRET,
            gitlab_webhook_token=GITLAB_TOKEN,
            bitbucket_webhook_secret=BITBUCKET_SECRET,
            github_api_url=api.url,
            gitlab_api_url=f"{api.url}/api/v4",
            bitbucket_api_url=api.url,
            github_token="ghp_test",
            risk_api_url=f"http://127.0.0.1:{free_port()}",  # no model here: the policy's on_error gate
            public_url="http://awo.example",
            webhook_attempts=2,
        )

    def commit(self, message: str, branch: str) -> str:
        self._n = getattr(self, "_n", 0) + 1  # set by the first commit, in __init__
        self.dev.lines(f"shop/mod{self._n % 3}.py", 4 + self._n, tag=f"c{self._n}")
        sha = self.dev.commit(message, at=T0 + self._n * DAY)
        git(self.dev.path, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        return sha

    def app(self):
        return create_agent_app(self.settings, webhook_handler=webhook_handler(self.settings))

    def queue(self) -> WebhookQueue:
        return WebhookQueue(self.settings.data_dir / "webhooks.db")


@pytest.fixture
def world(tmp_path: Path, host_api: HostApi) -> World:
    host_api.calls.clear()
    host_api.answers.clear()
    return World(tmp_path, host_api)


def github_push(before: str, after: str, shas: list[str], branch: str = "main") -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "before": before,
        "after": after,
        "deleted": False,
        "repository": {"full_name": "acme/shop"},
        "commits": [{"id": s} for s in shas],
    }


def post_github(
    client: TestClient, payload: Any, delivery: str, event: str = "push", secret: str = GITHUB_SECRET
):
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": hmac_signature(secret, body),
        "Content-Type": "application/json",
    }
    return client.post("/webhooks/github", content=body, headers=headers)


def wait_for_jobs(queue: WebhookQueue, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = queue.jobs()
        if jobs and all(j["status"] in ("done", "failed", "coalesced") for j in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"jobs still waiting after {timeout}s: {queue.jobs()}")


def decision_of(world: World, job: dict[str, Any]) -> dict[str, Any]:
    result = JobResult(**json.loads(job["result"]))
    assert result.decision_id is not None
    return audit_log(world.settings).find(result.decision_id).decision


def test_a_signed_github_push_is_fetched_mined_decided_and_reported_as_a_commit_status(world, host_api):
    mine_repository(world.checkout, world.settings, name="shop")  # the checkout was mined before
    new = [world.commit("add pricing", "main"), world.commit("fix pricing", "main")]
    with TestClient(world.app()) as client:
        answer = post_github(client, github_push(world.history[-1], new[-1], new), "delivery-1")
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        [job] = wait_for_jobs(world.queue())
    assert job["status"] == "done", job["error"]
    assert "2 commits mined" in json.loads(job["result"])["message"]
    mined = pd.read_parquet(world.settings.repo_data_dir("shop") / "commits.parquet")
    assert set(new) <= set(mined["sha"]) and len(mined) == 5
    decision = decision_of(world, job)
    assert set(decision["shas"]) == set(new) and decision["repo"] == "shop"
    [call] = host_api.calls
    assert call["path"] == f"/repos/acme/shop/statuses/{new[-1]}"
    jsonschema.validate(call["json"], GITHUB_STATUS)
    assert call["json"]["state"] == STATE_OF_GATE[decision["decision"]["gate"]]
    assert call["json"]["context"] == "awo/risk"
    assert call["json"]["target_url"].endswith(decision["decision_id"])
    assert call["headers"]["Authorization"] == "Bearer ghp_test"


def test_a_bad_or_missing_signature_gets_401_and_nothing_is_queued_or_sent(world, host_api):
    after = world.commit("change", "main")
    payload = github_push(world.history[-1], after, [after])
    with TestClient(world.app()) as client:
        assert post_github(client, payload, "d1", secret="wrong").status_code == 401
        body = json.dumps(payload).encode()
        unsigned = client.post("/webhooks/github", content=body, headers={"X-GitHub-Event": "push"})
        assert unsigned.status_code == 401 and unsigned.json()["code"] == "bad_signature"
        tampered = client.post(
            "/webhooks/github",
            content=body.replace(b"acme", b"evil"),
            headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": hmac_signature(GITHUB_SECRET, body)},
        )
        assert tampered.status_code == 401
        gitlab = client.post(
            "/webhooks/gitlab",
            content=b"{}",
            headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"},
        )
        assert gitlab.status_code == 401
        bitbucket = client.post(
            "/webhooks/bitbucket",
            content=b"{}",
            headers={"X-Event-Key": "repo:push", "X-Hub-Signature": hmac_signature("other", b"{}")},
        )
        assert bitbucket.status_code == 401
    assert world.queue().jobs() == [] and host_api.calls == []


def test_a_replayed_delivery_id_is_ignored(world):
    after = world.commit("change", "main")
    payload = github_push(world.history[-1], after, [after])
    client = TestClient(world.app())  # not started: the deliveries stay queued
    assert post_github(client, payload, "same-delivery").status_code == 202
    replay = post_github(client, payload, "same-delivery")
    assert replay.status_code == 200 and replay.json()["status"] == "replayed"
    assert len(world.queue().jobs()) == 1


def test_a_burst_for_one_branch_becomes_one_job_for_the_newest_head_which_survives_a_restart(world, host_api):
    tips = [world.history[-1]]
    client = TestClient(world.app())  # a service that stops before its worker runs anything
    for i in range(5):
        tips.append(world.commit(f"burst {i}", "main"))
        answer = post_github(client, github_push(tips[-2], tips[-1], [tips[-1]]), f"burst-{i}")
        assert answer.status_code == 202
    jobs = world.queue().jobs()
    assert [j["status"] for j in jobs] == ["coalesced"] * 4 + ["pending"]
    merged = HostEvent.from_json(jobs[-1]["event"])
    assert (merged.base, merged.head, merged.shas) == (tips[0], tips[-1], tuple(tips[1:]))
    with TestClient(world.app()):  # the service again: its worker drains what was queued
        [*_, job] = wait_for_jobs(world.queue())
    assert job["status"] == "done", job["error"]
    assert set(decision_of(world, job)["shas"]) == set(tips[1:])
    assert [c["path"] for c in host_api.calls] == [f"/repos/acme/shop/statuses/{tips[-1]}"]


def test_a_job_in_progress_when_its_worker_died_runs_again_after_a_restart(world, host_api):
    after = world.commit("change", "main")
    queue = world.queue()
    client = TestClient(world.app())
    assert post_github(client, github_push(world.history[-1], after, [after]), "d-crash").status_code == 202
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs: the worker that crashed mid-job
    claimed = queue.claim(owner=f"{socket.gethostname()}:{gone.pid}")
    assert claimed is not None and queue.claim() is None  # leased: nobody else takes it meanwhile
    with TestClient(world.app()):
        [job] = wait_for_jobs(queue)
    assert job["status"] == "done" and job["attempts"] == 2
    assert [c["path"] for c in host_api.calls] == [f"/repos/acme/shop/statuses/{after}"]


def test_a_failing_job_waits_retries_and_is_given_up_after_its_attempts(tmp_path):
    queue = WebhookQueue(tmp_path / "q.db", attempts=2, lease_seconds=60)
    event = HostEvent("github", "acme/shop", "push", "refs/heads/main", "b" * 40, "a" * 40, "d", "main")
    queue.enqueue(event, now=0)
    first = queue.claim(now=0)
    assert first is not None and first.attempt == 1
    assert queue.fail(first.job_id, "git fetch failed", now=1) == "pending"
    assert queue.claim(now=2) is None  # backing off
    second = queue.claim(now=100)
    assert second is not None and second.attempt == 2
    assert queue.claim(now=101) is None
    # the lease runs out (a worker on another machine died): the job is due, but has had its attempts
    assert queue.claim(now=100 + 61) is None
    [row] = queue.jobs()
    assert row["status"] == "failed" and "gave up after 2 attempts" in row["error"]


def test_a_gitlab_merge_request_gets_a_commit_status_and_a_note(world, host_api):
    git(world.dev.path, "checkout", "-q", "-b", "feature")
    head = [world.commit("feature a", "feature"), world.commit("feature b", "feature")][-1]
    payload = {
        "object_kind": "merge_request",
        "project": {"id": 7, "path_with_namespace": "acme/shop"},
        "object_attributes": {
            "iid": 4,
            "action": "open",
            "source_branch": "feature",
            "target_branch": "main",
            "last_commit": {"id": head},
        },
    }
    body = json.dumps(payload).encode()
    with TestClient(world.app()) as client:
        headers = {
            "X-Gitlab-Event": "Merge Request Hook",
            "X-Gitlab-Token": GITLAB_TOKEN,
            "Idempotency-Key": "k1",
        }
        assert client.post("/webhooks/gitlab", content=body, headers=headers).status_code == 202
        [job] = wait_for_jobs(world.queue())
    assert job["status"] == "done", job["error"]
    decision = decision_of(world, job)
    assert len(decision["shas"]) == 2 and head in decision["shas"]
    status, note = host_api.calls
    assert status["path"] == f"/api/v4/projects/acme%2Fshop/statuses/{head}"
    jsonschema.validate(status["json"], GITLAB_STATUS)
    assert status["json"]["state"] == GITLAB_STATE[STATE_OF_GATE[decision["decision"]["gate"]]]
    assert status["json"]["ref"] == "feature"
    assert note["path"] == "/api/v4/projects/acme%2Fshop/merge_requests/4/notes"
    jsonschema.validate(note["json"], GITLAB_NOTE)
    assert decision["decision_id"] in note["json"]["body"]


def test_a_gitlab_push_and_a_bitbucket_push_get_their_hosts_status(world, host_api):
    after = world.commit("change", "main")
    gitlab = {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "before": world.history[-1],
        "after": after,
        "project": {"id": 7, "path_with_namespace": "acme/shop"},
        "commits": [{"id": after}],
    }
    bitbucket = {
        "repository": {"full_name": "acme/shop"},
        "push": {
            "changes": [
                {
                    "new": {"type": "branch", "name": "main", "target": {"hash": after}},
                    "old": {"type": "branch", "name": "main", "target": {"hash": world.history[-1]}},
                    "commits": [{"hash": after}],
                }
            ]
        },
    }
    with TestClient(world.app()) as client:
        body = json.dumps(gitlab).encode()
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN}
        assert client.post("/webhooks/gitlab", content=body, headers=headers).status_code == 202
        wait_for_jobs(world.queue())
        body = json.dumps(bitbucket).encode()
        headers = {
            "X-Event-Key": "repo:push",
            "X-Request-UUID": "{5f6e}",
            "X-Hub-Signature": hmac_signature(BITBUCKET_SECRET, body),
        }
        assert client.post("/webhooks/bitbucket", content=body, headers=headers).status_code == 202
        jobs = wait_for_jobs(world.queue())
    assert [j["status"] for j in jobs] == ["done", "done"], [j["error"] for j in jobs]
    gitlab_call, bitbucket_call = host_api.calls
    assert gitlab_call["path"] == f"/api/v4/projects/acme%2Fshop/statuses/{after}"
    jsonschema.validate(gitlab_call["json"], GITLAB_STATUS)
    assert bitbucket_call["path"] == f"/2.0/repositories/acme/shop/commit/{after}/statuses/build"
    jsonschema.validate(bitbucket_call["json"], BITBUCKET_BUILD_STATUS)
    gate = decision_of(world, jobs[1])["decision"]["gate"]
    assert bitbucket_call["json"]["state"] == BITBUCKET_STATE[STATE_OF_GATE[gate]]


def test_a_host_api_that_fails_for_a_moment_is_retried_and_one_that_refuses_fails_the_job(world, host_api):
    first, second = world.commit("one", "main"), world.commit("two", "main")
    host_api.answers[:] = [503]  # one outage, then 201
    with TestClient(world.app()) as client:
        assert post_github(client, github_push(world.history[-1], first, [first]), "r1").status_code == 202
        [ok] = wait_for_jobs(world.queue())
    assert ok["status"] == "done"
    assert [c["path"] for c in host_api.calls] == [f"/repos/acme/shop/statuses/{first}"] * 2
    host_api.answers[:] = [422]  # the host refuses (a token without the right): not retried, an error
    event = HostEvent("github", "acme/shop", "push", "refs/heads/main", second, first, "r2", "main")
    with pytest.raises(HostApiError, match=f"HTTP 422.*/statuses/{second}|/statuses/{second}.*HTTP 422"):
        webhook_handler(world.settings)(event)
    assert len(host_api.calls) == 3


def test_unhandled_events_are_ignored_with_a_reason_and_unknown_repositories_get_404(world):
    after = world.commit("change", "main")
    client = TestClient(world.app())
    ping = post_github(client, {"zen": "hi", "repository": {"full_name": "acme/shop"}}, "p", event="ping")
    assert ping.status_code == 202 and "ping" in ping.json()["reason"]
    tag = dict(github_push(world.history[-1], after, [after]), ref="refs/tags/v1")
    assert "not a branch" in post_github(client, tag, "t").json()["reason"]
    deleted = github_push(after, "0" * 40, [])
    assert "deleted" in post_github(client, deleted, "del").json()["reason"]
    closed = {"action": "closed", "number": 3, "repository": {"full_name": "acme/shop"}}
    assert "closed" in post_github(client, closed, "c", event="pull_request").json()["reason"]
    elsewhere = dict(github_push(world.history[-1], after, [after]), repository={"full_name": "acme/other"})
    unknown = post_github(client, elsewhere, "u")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_repository"
    bad = dict(github_push(world.history[-1], after, [after]), after="--upload-pack=evil")
    assert post_github(client, bad, "b").status_code == 400
    assert world.queue().jobs() == []


def test_a_host_without_a_secret_has_no_route(world):
    settings = world.settings.model_copy(
        update={"gitlab_webhook_token": None, "bitbucket_webhook_secret": None}
    )
    client = TestClient(create_agent_app(settings, webhook_handler=webhook_handler(settings)))
    assert client.post("/webhooks/gitlab", content=b"{}").status_code == 404
    assert client.post("/webhooks/bitbucket", content=b"{}").status_code == 404
    assert post_github(client, {"zen": "x"}, "z", event="ping").status_code == 202


def test_a_github_pull_request_is_queued_on_its_number_with_its_base_and_head(world):
    base, head = world.history[-1], world.commit("feature", "feature")
    client = TestClient(world.app())
    payload = {
        "action": "synchronize",
        "number": 12,
        "repository": {"full_name": "acme/shop"},
        "pull_request": {"head": {"sha": head, "ref": "feature"}, "base": {"sha": base, "ref": "main"}},
    }
    assert post_github(client, payload, "pr-1", event="pull_request").status_code == 202
    [job] = world.queue().jobs()
    event = HostEvent.from_json(job["event"])
    assert (event.kind, event.ref, event.number, event.base, event.head) == (
        "pull_request",
        "pull/12",
        12,
        base,
        head,
    )
    assert (event.branch, event.base_branch) == ("feature", "main")
