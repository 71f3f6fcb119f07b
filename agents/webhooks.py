"""Git-host webhook receivers (GitHub, GitLab, Bitbucket Cloud): the signature is checked on the raw body,
the few fields a decision needs become a `HostEvent`, and the event waits in a durable SQLite queue that a
worker thread drains (replays ignored, bursts for one ref coalesced, leases survive a crash)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from features.errors import AwoError
from features.settings import Settings
from serving.admission import AdmittedRoute

log = logging.getLogger(__name__)

Host = Literal["github", "gitlab", "bitbucket"]
HOSTS: tuple[Host, ...] = ("github", "gitlab", "bitbucket")
ZERO_SHA = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # SHA-1 or SHA-256 object names
# A branch name that is safe as a git argument: no leading '-', no '..', no spaces or control characters.
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/+@-]{1,200}$")
_FULL_NAME = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)+$")


class Ignored(Exception):
    """A verified delivery that asks for no decision (another event, a deleted branch, a closed PR)."""


class BadPayload(AwoError):
    """A verified delivery whose JSON lacks a field the event needs."""


@dataclass(frozen=True)
class HostEvent:
    """What a decision needs from one push or pull/merge request, whichever host sent it."""

    host: Host
    repo: str  # full name on the host: owner/name (GitLab: the project's path with its namespace)
    kind: Literal["push", "pull_request"]
    ref: str  # what bursts coalesce on: refs/heads/<branch> for a push, pull/<number> for a PR or MR
    head: str  # the pushed tip, or the PR's head commit
    base: str | None  # the tip before the push, or the PR's base commit; None: not known (new branch, MR)
    delivery_id: str
    branch: str  # the pushed branch, or the PR's source branch
    base_branch: str | None = None  # a PR's target branch (GitLab's MR hook carries no base commit)
    number: int | None = None  # the PR's number or the MR's iid
    shas: tuple[str, ...] = ()  # the commits the host listed in the delivery

    @property
    def name(self) -> str:
        """The repository's own name on the host (the last part of the full name)."""
        return self.repo.rsplit("/", 1)[-1]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HostEvent:
        doc = json.loads(text)
        doc["shas"] = tuple(doc.get("shas") or ())
        return cls(**doc)


@dataclass(frozen=True)
class JobResult:
    """What a webhook job did: the decision and what went back to the host."""

    decision_id: str | None
    gate: str | None
    state: str  # the commit status sent: success, pending or failure
    message: str


WebhookHandler = Callable[[HostEvent], JobResult]


# --- verification (pure) -------------------------------------------------------------------------------


def hmac_signature(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, as GitHub's X-Hub-Signature-256 and Bitbucket Cloud's
    X-Hub-Signature carry it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """The header against the body's HMAC, compared in constant time."""
    if not header:
        return False
    return hmac.compare_digest(hmac_signature(secret, body).encode(), header.strip().encode())


def token_matches(secret: str, header: str | None) -> bool:
    """GitLab's X-Gitlab-Token (the secret itself, no HMAC), compared in constant time over digests so the
    comparison does not depend on the lengths either."""
    if not header:
        return False
    return hmac.compare_digest(
        hashlib.sha256(secret.encode()).digest(), hashlib.sha256(header.encode()).digest()
    )


def configured_hosts(settings: Settings) -> list[Host]:
    """Hosts with a webhook secret: only those get a route."""
    secrets = {
        "github": settings.github_webhook_secret,
        "gitlab": settings.gitlab_webhook_token,
        "bitbucket": settings.bitbucket_webhook_secret,
    }
    return [host for host in HOSTS if secrets[host] is not None]


def verified(host: Host, settings: Settings, headers: Mapping[str, str], body: bytes) -> bool:
    if host == "github":
        assert settings.github_webhook_secret is not None
        secret = settings.github_webhook_secret.get_secret_value()
        return signature_matches(secret, body, headers.get("x-hub-signature-256"))
    if host == "gitlab":
        assert settings.gitlab_webhook_token is not None
        return token_matches(settings.gitlab_webhook_token.get_secret_value(), headers.get("x-gitlab-token"))
    assert settings.bitbucket_webhook_secret is not None
    secret = settings.bitbucket_webhook_secret.get_secret_value()
    return signature_matches(secret, body, headers.get("x-hub-signature"))


EVENT_HEADER: dict[Host, str] = {
    "github": "x-github-event",
    "gitlab": "x-gitlab-event",
    "bitbucket": "x-event-key",
}
# The delivery's id, kept across the host's own retries: GitHub's X-GitHub-Delivery (also on a
# redelivery), GitLab's Idempotency-Key (17.4+; older: X-Gitlab-Event-UUID), Bitbucket's X-Request-UUID.
DELIVERY_HEADERS: dict[Host, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),
    "bitbucket": ("x-request-uuid",),
}


def delivery_id(host: Host, headers: Mapping[str, str], body: bytes) -> str:
    """The delivery's id from its header; without one, the body's digest (a retry sends the same body)."""
    for name in DELIVERY_HEADERS[host]:
        value = headers.get(name, "").strip()
        if value:
            return value[:200]
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- parsing (pure) ------------------------------------------------------------------------------------


def _get(doc: Any, path: str) -> Any:
    value = doc
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise BadPayload(f"payload field {path!r} is missing")
        value = value[key]
    return value


def _text(doc: Any, path: str, pattern: re.Pattern[str] | None = None) -> str:
    value = _get(doc, path)
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise BadPayload(f"payload field {path!r} is not valid: {str(value)[:80]!r}")
    return value


def _number(doc: Any, path: str) -> int:
    value = _get(doc, path)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadPayload(f"payload field {path!r} is not a positive number: {str(value)[:80]!r}")
    return value


def _shas(items: Any, key: str) -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(
        i[key] for i in items if isinstance(i, dict) and isinstance(i.get(key), str) and _SHA.match(i[key])
    )


def _branch_of(ref: str) -> str:
    if not ref.startswith("refs/heads/"):
        raise Ignored(f"ref {ref[:80]!r} is not a branch")
    branch = ref.removeprefix("refs/heads/")
    if not _BRANCH.match(branch):
        raise BadPayload(f"payload field 'ref' names an unusable branch: {branch[:80]!r}")
    return branch


def _push(host: Host, payload: Any, delivery: str, repo: str) -> HostEvent:
    """A GitHub or GitLab push: `ref`, `before`, `after`, `commits[].id` (both hosts' documented push
    payloads share these fields)."""
    ref = _text(payload, "ref")
    branch = _branch_of(ref)
    after = _text(payload, "after", _SHA)
    if after == ZERO_SHA:
        raise Ignored(f"branch {branch!r} was deleted")
    before = _text(payload, "before", _SHA)
    return HostEvent(
        host=host,
        repo=repo,
        kind="push",
        ref=ref,
        head=after,
        base=None if before == ZERO_SHA else before,
        delivery_id=delivery,
        branch=branch,
        shas=_shas(payload.get("commits"), "id"),
    )


def _pull_request(
    host: Host,
    repo: str,
    delivery: str,
    number: int,
    *,
    head: str,
    base: str | None,
    branch: str,
    base_branch: str,
) -> HostEvent:
    """A pull or merge request's event; its bursts coalesce on `pull/<number>`."""
    return HostEvent(
        host=host,
        repo=repo,
        kind="pull_request",
        ref=f"pull/{number}",
        head=head,
        base=base,
        delivery_id=delivery,
        branch=branch,
        base_branch=base_branch,
        number=number,
    )


def parse_github(event: str, delivery: str, payload: Any) -> list[HostEvent]:
    """GitHub's `push` and `pull_request` (opened, synchronize, reopened, ready_for_review) deliveries."""
    if event not in ("push", "pull_request"):
        raise Ignored(f"GitHub event {event[:40]!r} is not handled (push, pull_request)")
    repo = _text(payload, "repository.full_name", _FULL_NAME)
    if event == "pull_request":
        action = _get(payload, "action")
        if action not in ("opened", "synchronize", "reopened", "ready_for_review"):
            raise Ignored(f"pull_request action {str(action)[:40]!r} asks for no decision")
        pull = _get(payload, "pull_request")
        return [
            _pull_request(
                "github",
                repo,
                delivery,
                _number(payload, "number"),
                head=_text(pull, "head.sha", _SHA),
                base=_text(pull, "base.sha", _SHA),
                branch=_text(pull, "head.ref", _BRANCH),
                base_branch=_text(pull, "base.ref", _BRANCH),
            )
        ]
    return [_push("github", payload, delivery, repo)]


def parse_gitlab(event: str, delivery: str, payload: Any) -> list[HostEvent]:
    """GitLab's `Push Hook` and `Merge Request Hook` (open, reopen, and update with new commits)."""
    if event not in ("Push Hook", "Merge Request Hook"):
        raise Ignored(f"GitLab event {event[:40]!r} is not handled (Push Hook, Merge Request Hook)")
    repo = _text(payload, "project.path_with_namespace", _FULL_NAME)
    if event == "Push Hook":
        return [_push("gitlab", payload, delivery, repo)]
    attributes = _get(payload, "object_attributes")
    action = attributes.get("action") if isinstance(attributes, dict) else None
    # An `update` carries `oldrev` only when commits were pushed; other updates are title, labels ...
    if action not in ("open", "reopen", "update") or (action == "update" and "oldrev" not in attributes):
        raise Ignored(f"merge request action {str(action)[:40]!r} asks for no decision")
    return [
        _pull_request(
            "gitlab",
            repo,
            delivery,
            _number(attributes, "iid"),
            head=_text(attributes, "last_commit.id", _SHA),
            base=None,  # the MR hook names the target branch, not its commit: the job takes the merge base
            branch=_text(attributes, "source_branch", _BRANCH),
            base_branch=_text(attributes, "target_branch", _BRANCH),
        )
    ]


def parse_bitbucket(event: str, delivery: str, payload: Any) -> list[HostEvent]:
    """Bitbucket Cloud's `repo:push`: one event per pushed branch in `push.changes` (tags and deleted
    branches are skipped)."""
    if event != "repo:push":
        raise Ignored(f"Bitbucket event {event[:40]!r} is not handled (repo:push)")
    repo = _text(payload, "repository.full_name", _FULL_NAME)
    changes = _get(payload, "push.changes")
    events = []
    for i, change in enumerate(changes if isinstance(changes, list) else []):
        new = change.get("new") if isinstance(change, dict) else None
        if not isinstance(new, dict) or new.get("type") != "branch":
            continue
        old = change.get("old")
        branch = _text(new, "name", _BRANCH)
        events.append(
            HostEvent(
                host="bitbucket",
                repo=repo,
                kind="push",
                ref=f"refs/heads/{branch}",
                head=_text(new, "target.hash", _SHA),
                base=_text(old, "target.hash", _SHA) if isinstance(old, dict) else None,
                delivery_id=delivery if i == 0 else f"{delivery}#{i}",
                branch=branch,
                shas=_shas(change.get("commits"), "hash"),
            )
        )
    if not events:
        raise Ignored("the push changed no branch (tags or deleted branches only)")
    return events


PARSERS: dict[Host, Callable[[str, str, Any], list[HostEvent]]] = {
    "github": parse_github,
    "gitlab": parse_gitlab,
    "bitbucket": parse_bitbucket,
}


def configured_name(settings: Settings, full_name: str) -> str | None:
    """The `repositories` entry an event's repository maps to: the key equal to the full name, else the
    one equal to its last part (`acme/shop` → `shop`: repository names are folder names under the data
    root)."""
    if full_name in settings.repositories:
        return full_name
    name = full_name.rsplit("/", 1)[-1]
    return name if name in settings.repositories else None


def covering(pending: list[HostEvent], newest: HostEvent) -> HostEvent:
    """One event for a burst on one ref: the newest head, and for pushes the base of the oldest pending
    event, so the job decides on the whole range pushed meanwhile (a PR keeps its newest base)."""
    if not pending:
        return newest
    shas = tuple(dict.fromkeys([*(s for e in pending for s in e.shas), *newest.shas]))
    base = pending[0].base if newest.kind == "push" else newest.base
    return replace(newest, base=base, shas=shas)


# --- the durable queue ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    ref TEXT NOT NULL,
    event TEXT NOT NULL,               -- the HostEvent as JSON (a coalesced job's covers the burst)
    status TEXT NOT NULL,              -- pending, running, done, failed, coalesced
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,                        -- host:pid of the worker holding the lease
    lease_until REAL,
    not_before REAL NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    finished_at REAL,
    superseded_by INTEGER,             -- a coalesced delivery: the job that covers it
    result TEXT,                       -- JobResult as JSON
    error TEXT,
    UNIQUE (host, delivery_id, ref)
);
CREATE INDEX IF NOT EXISTS webhook_jobs_ready ON webhook_jobs (status, not_before, id);
"""


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    replayed: bool  # the delivery id was seen before: nothing new was queued
    coalesced: int  # pending jobs of the same ref this one now covers


@dataclass(frozen=True)
class Job:
    job_id: int
    event: HostEvent
    attempt: int


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class WebhookQueue:
    """Deliveries in SQLite (WAL) under the data root, one row each. The delivery id is a unique key, so a
    replay inserts nothing; a claimed job holds a lease, so a job in progress at a crash runs again (at
    once after a restart on the same machine, else when the lease runs out), up to `attempts` times."""

    def __init__(self, path: Path, attempts: int = 3, lease_seconds: float = 900.0) -> None:
        self.path = path
        self.attempts = attempts
        self.lease_seconds = lease_seconds
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def enqueue(self, event: HostEvent, now: float | None = None) -> Enqueued:
        """Insert the delivery; pending jobs of the same (repo, ref) fold into it (`covering`)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO webhook_jobs "
                "(host, delivery_id, repo, ref, event, status, received_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (event.host, event.delivery_id, event.repo, event.ref, event.to_json(), now),
            )
            if cursor.rowcount == 0:
                (job_id,) = db.execute(
                    "SELECT id FROM webhook_jobs WHERE host = ? AND delivery_id = ? AND ref = ?",
                    (event.host, event.delivery_id, event.ref),
                ).fetchone()
                return Enqueued(job_id, replayed=True, coalesced=0)
            job_id = int(cursor.lastrowid or 0)
            older = db.execute(
                "SELECT id, event FROM webhook_jobs WHERE host = ? AND repo = ? AND ref = ? "
                "AND status = 'pending' AND id < ? ORDER BY id",
                (event.host, event.repo, event.ref, job_id),
            ).fetchall()
            if older:
                merged = covering([HostEvent.from_json(e) for _, e in older], event)
                db.execute("UPDATE webhook_jobs SET event = ? WHERE id = ?", (merged.to_json(), job_id))
                db.executemany(
                    "UPDATE webhook_jobs SET status = 'coalesced', superseded_by = ?, finished_at = ? "
                    "WHERE id = ?",
                    [(job_id, now, old_id) for old_id, _ in older],
                )
            return Enqueued(job_id, replayed=False, coalesced=len(older))

    def claim(self, owner: str | None = None, now: float | None = None) -> Job | None:
        """The oldest ready job (pending, or running with an expired lease), leased to `owner`; a job that
        has had all its attempts is marked failed instead."""
        now = time.time() if now is None else now
        owner = owner or worker_identity()
        with self._transaction() as db:
            while True:
                row = db.execute(
                    "SELECT id, event, attempts FROM webhook_jobs "
                    "WHERE (status = 'pending' AND not_before <= ?) "
                    "OR (status = 'running' AND lease_until < ?) ORDER BY id LIMIT 1",
                    (now, now),
                ).fetchone()
                if row is None:
                    return None
                job_id, event, attempts = row
                if attempts >= self.attempts:
                    db.execute(
                        "UPDATE webhook_jobs SET status = 'failed', finished_at = ?, "
                        "error = coalesce(error || '; ', '') || ? WHERE id = ?",
                        (now, f"gave up after {attempts} attempts", job_id),
                    )
                    continue
                db.execute(
                    "UPDATE webhook_jobs SET status = 'running', attempts = attempts + 1, owner = ?, "
                    "lease_until = ? WHERE id = ?",
                    (owner, now + self.lease_seconds, job_id),
                )
                return Job(job_id, HostEvent.from_json(event), attempts + 1)

    def finish(self, job_id: int, result: JobResult, now: float | None = None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE webhook_jobs SET status = 'done', result = ?, finished_at = ?, lease_until = NULL "
                "WHERE id = ?",
                (json.dumps(asdict(result)), time.time() if now is None else now, job_id),
            )

    def fail(self, job_id: int, error: str, now: float | None = None) -> str:
        """Record a failed attempt: the job waits (exponential backoff) for another, or is given up. Returns
        the job's new status."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            (attempts,) = db.execute("SELECT attempts FROM webhook_jobs WHERE id = ?", (job_id,)).fetchone()
            if attempts >= self.attempts:
                db.execute(
                    "UPDATE webhook_jobs SET status = 'failed', finished_at = ?, lease_until = NULL, "
                    "error = ? WHERE id = ?",
                    (now, f"{error[:2000]}; gave up after {attempts} attempts", job_id),
                )
                return "failed"
            db.execute(
                "UPDATE webhook_jobs SET status = 'pending', lease_until = NULL, not_before = ?, error = ? "
                "WHERE id = ?",
                (now + min(300.0, 5.0 * 2 ** (attempts - 1)), error[:2000], job_id),
            )
            return "pending"

    def reclaim_orphans(self) -> int:
        """Jobs leased by a worker on this machine whose process is gone (a crash): ready again now."""
        here = socket.gethostname()
        with self._transaction() as db:
            rows = db.execute("SELECT id, owner FROM webhook_jobs WHERE status = 'running'").fetchall()
            dead = []
            for job_id, owner in rows:
                machine, _, pid = (owner or "").rpartition(":")
                if machine == here and pid.isdigit() and not _pid_alive(int(pid)):
                    dead.append((job_id,))
            db.executemany(
                "UPDATE webhook_jobs SET status = 'pending', lease_until = NULL WHERE id = ?", dead
            )
            return len(dead)

    def jobs(self) -> list[dict[str, Any]]:
        """Every row, oldest first (for the tests and for an operator's look)."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM webhook_jobs ORDER BY id")]


class WebhookWorker:
    """One thread that runs queued jobs through the handler, woken by each delivery (else every `poll_s`)."""

    def __init__(self, queue: WebhookQueue, handler: WebhookHandler, poll_s: float = 1.0) -> None:
        self.queue = queue
        self.handler = handler
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        reclaimed = self.queue.reclaim_orphans()
        if reclaimed:
            log.warning("webhooks: %d jobs of a stopped worker are queued again", reclaimed)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="awo-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def run_once(self) -> bool:
        """Run one ready job, if there is one; whether there was."""
        job = self.queue.claim()
        if job is None:
            return False
        try:
            result = self.handler(job.event)
        except AwoError as exc:
            status = self.queue.fail(job.job_id, str(exc))
            log.warning("webhook job %d (attempt %d): %s; now %s", job.job_id, job.attempt, exc, status)
        except Exception as exc:  # a bug or an outage: recorded, retried, never kills the worker
            log.exception("webhook job %d (attempt %d) failed", job.job_id, job.attempt)
            self.queue.fail(job.job_id, f"{type(exc).__name__}: {exc}")
        else:
            self.queue.finish(job.job_id, result)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.run_once():
                self._wake.wait(self.poll_s)
                self._wake.clear()


# --- the routes ----------------------------------------------------------------------------------------


def _problem(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(status, detail={"code": code, "message": message})


def webhook_router(settings: Settings, queue: WebhookQueue, on_queued: Callable[[], None]) -> APIRouter:
    """POST /webhooks/{github,gitlab,bitbucket}, one per host with a secret. Answers: 202 queued, 200 a
    replayed delivery, 202 ignored (with the reason), 401 bad signature, 404 a repository not under
    `repositories` (the host's delivery log shows the misconfiguration), 400 a payload lacking a field."""
    router = APIRouter(prefix="/webhooks", tags=["webhooks"], route_class=AdmittedRoute)

    async def receive(host: Host, request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: the signature is over them, before any parsing
        if not verified(host, settings, request.headers, body):
            raise _problem(401, "bad_signature", f"the {host} webhook signature or token does not match")
        event_name = request.headers.get(EVENT_HEADER[host], "")
        delivery = delivery_id(host, request.headers, body)
        try:
            payload = json.loads(body)
            events = PARSERS[host](event_name, delivery, payload)
        except Ignored as exc:
            return JSONResponse({"status": "ignored", "reason": str(exc)}, status_code=202)
        except (ValueError, BadPayload) as exc:  # json.JSONDecodeError is a ValueError
            raise _problem(400, "bad_payload", f"{host} delivery {delivery}: {exc}") from None
        unknown = sorted({e.repo for e in events if configured_name(settings, e.repo) is None})
        if unknown:
            raise _problem(
                404, "unknown_repository", f"repository {unknown[0]!r} is not under `repositories`"
            )
        done = await run_in_threadpool(lambda: [queue.enqueue(e) for e in events])
        if all(d.replayed for d in done):
            return JSONResponse(
                {"status": "replayed", "delivery": delivery, "jobs": [d.job_id for d in done]}
            )
        on_queued()
        return JSONResponse(
            {
                "status": "queued",
                "delivery": delivery,
                "jobs": [d.job_id for d in done],
                "coalesced": sum(d.coalesced for d in done),
            },
            status_code=202,
        )

    for host in configured_hosts(settings):
        router.add_api_route(
            f"/{host}",
            _route_for(host, receive),
            methods=["POST"],
            status_code=202,
            name=f"webhook_{host}",
            summary=f"{host} webhook: verify, queue, answer",
        )
    return router


def _route_for(host: Host, receive: Callable[[Host, Request], Any]) -> Callable[[Request], Any]:
    async def route(request: Request) -> JSONResponse:
        return await receive(host, request)

    return route


@dataclass
class WebhookReceiver:
    """The routes, their queue and its worker; the worker runs for the app's lifespan."""

    router: APIRouter
    queue: WebhookQueue
    worker: WebhookWorker

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(self.worker.stop)


def webhook_receiver(settings: Settings, handler: WebhookHandler | None) -> WebhookReceiver | None:
    """The receiver for the hosts with a secret, queueing under `<data root>/webhooks.db`; None when no host
    has a secret or no handler runs the jobs."""
    if handler is None or not configured_hosts(settings):
        return None
    queue = WebhookQueue(settings.data_dir / "webhooks.db", attempts=settings.webhook_attempts)
    worker = WebhookWorker(queue, handler)
    return WebhookReceiver(webhook_router(settings, queue, worker.wake), queue, worker)
