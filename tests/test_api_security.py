"""Admission to the risk API before the body is read: the token, its scope and the body's size are checked
before a byte of the body reaches the parser. Through a real HTTP client, through the ASGI interface itself
(to count the body bytes the app pulled) and through a real uvicorn server; no model is needed."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from features.settings import ApiToken, load_settings
from serving.auth import new_token
from tests.conftest import free_port

READER, READER_DIGEST = new_token()
OPERATOR, OPERATOR_DIGEST = new_token()  # may reload models, may not read scores
LIMIT = 4096  # bytes of body the app reads
CHUNK = 1000
VALID = {"commits": [{"repo": "demo", "metrics": {"la": 10}}]}
INVALID = {"commits": [{"repo": "demo", "sha": "not-a-sha"}], "drivers": "many"}


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> FastAPI:
    from serving.app import create_app

    tokens = [
        ApiToken(name="ci", sha256=READER_DIGEST, scopes=["risk:read"]),
        ApiToken(name="ops", sha256=OPERATOR_DIGEST, scopes=["models:reload"]),
    ]
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("api-security"), api_tokens=tokens, max_batch=3, max_body_bytes=LIMIT
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app) -> Iterator[TestClient]:
    yield TestClient(app)  # no lifespan: nothing here needs a champion loaded


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def _asgi_post(
    app: FastAPI, path: str, headers: dict[str, str], chunks: Iterator[bytes]
) -> tuple[int, dict, int]:
    """POST through the ASGI interface: the status, the JSON answer, and how many body bytes the app pulled
    (the client sends `chunks` as fast as the app asks for them)."""
    pulled = 0
    answered = False
    messages: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        chunk = None if answered else next(chunks, None)
        if chunk is None:
            return {"type": "http.disconnect"} if answered else {"type": "http.request", "body": b""}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: Message) -> None:
        nonlocal answered
        answered = answered or message["type"] == "http.response.start"
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, json.loads(body), pulled


def _flood() -> Iterator[bytes]:
    """A client sending far more than the limit (finite, so that code reading it all still ends)."""
    return (b" " * CHUNK for _ in range(1000))


@pytest.mark.parametrize(
    "body",
    [_json(VALID), _json(INVALID), b'{"commits": [', b"[" * (4 * LIMIT)],
    ids=["valid", "invalid", "malformed", "over-the-limit"],
)
@pytest.mark.parametrize("path", ["/v1/risk/commits", "/v1/risk/deployments"])
def test_anonymous_request_gets_401_and_learns_nothing_about_the_schema(client, path, body):
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 401
    assert response.json() == {"code": "unauthenticated", "message": "send Authorization: Bearer <token>"}
    assert response.headers["www-authenticate"] == "Bearer"


def test_anonymous_and_unknown_callers_are_refused_before_the_body_is_read(app):
    for headers in ({}, _auth("awo_not-a-real-token")):
        status, answer, pulled = _asgi_post(app, "/v1/risk/commits", headers, _flood())
        assert (status, answer["code"], pulled) == (401, "unauthenticated", 0)


def test_wrong_scope_gets_403_before_the_body_is_read(app, client):
    status, answer, pulled = _asgi_post(app, "/v1/risk/commits", _auth(OPERATOR), _flood())
    assert (status, pulled) == (403, 0)
    assert answer == {"code": "forbidden", "message": "token 'ops' lacks scope 'risk:read'"}
    invalid = client.post("/v1/risk/commits", json=INVALID, headers=_auth(OPERATOR))
    assert invalid.status_code == 403 and "errors" not in invalid.json()


def test_declared_length_over_the_limit_gets_413_before_the_body_is_read(app, client):
    headers = {**_auth(READER), "content-type": "application/json", "content-length": str(LIMIT + 1)}
    status, answer, pulled = _asgi_post(app, "/v1/risk/commits", headers, _flood())
    assert (status, pulled) == (413, 0)
    assert answer == {"code": "too_large", "message": f"the body declares {LIMIT + 1} bytes; at most {LIMIT}"}
    padded = _json(VALID).ljust(LIMIT + 1)  # valid JSON, one byte too many
    assert client.post("/v1/risk/commits", content=padded, headers=_auth(READER)).status_code == 413


def test_a_body_streamed_without_a_length_is_cut_off_at_the_limit(app, client):
    headers = {**_auth(READER), "content-type": "application/json", "transfer-encoding": "chunked"}
    status, answer, pulled = _asgi_post(app, "/v1/risk/commits", headers, _flood())
    assert status == 413 and answer == {"code": "too_large", "message": f"the body exceeds {LIMIT} bytes"}
    assert LIMIT < pulled <= LIMIT + CHUNK  # the chunk that crossed the limit, and not one more
    streamed = client.post(
        "/v1/risk/commits", content=(b" " * CHUNK for _ in range(10)), headers={**_auth(READER)}
    )
    assert "content-length" not in streamed.request.headers and streamed.status_code == 413


def test_a_body_streamed_within_the_limit_is_read_whole(client):
    body = _json(VALID)
    streamed = client.post(
        "/v1/risk/commits",
        content=(body[i : i + 7] for i in range(0, len(body), 7)),
        headers={**_auth(READER), "content-type": "application/json"},
    )
    assert streamed.status_code == 503 and streamed.json()["code"] == "no_model"  # parsed, scored: no model


def test_authorized_requests_still_reach_validation_and_the_route(client):
    invalid = client.post("/v1/risk/commits", json=INVALID, headers=_auth(READER))
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["path"] == "body.commits.0.sha"
    valid = client.post("/v1/risk/commits", json=VALID, headers=_auth(READER))
    assert valid.status_code == 503 and valid.json()["code"] == "no_model"
    reload = client.post("/v1/models/reload", headers=_auth(OPERATOR))
    assert reload.status_code == 200 and reload.json()["loaded"] == {}
    assert client.get("/v1/models", headers=_auth(OPERATOR)).status_code == 403


def test_an_oversized_batch_within_the_byte_limit_keeps_its_own_413(client):
    batch = {"commits": [{"repo": "demo", "metrics": {"la": i}} for i in range(4)]}
    response = client.post("/v1/risk/commits", json=batch, headers=_auth(READER))
    assert response.status_code == 413
    assert response.json() == {"code": "batch_too_large", "message": "4 commits; at most 3"}


def test_health_and_metrics_stay_open(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code == 503  # not ready (no champion), but not 401


def test_metrics_keep_our_counts_when_feast_has_set_prometheus_multiproc_dir(client, tmp_path, monkeypatch):
    import feast.metrics  # noqa: F401  (importing it sets PROMETHEUS_MULTIPROC_DIR, as materialize does)

    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # Feast's own temporary folder, empty of our counts
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'awo_requests_total{method="GET",route="/healthz",status="200"}' in text


def test_openapi_declares_the_bearer_scheme_on_every_protected_operation(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token made by `awo token`",
    }
    security = {
        (path, method): operation.get("security")
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    assert security == {
        ("/healthz", "get"): None,
        ("/readyz", "get"): None,
        ("/metrics", "get"): None,
        ("/v1/risk/commits", "post"): [{"HTTPBearer": ["risk:read"]}],
        ("/v1/risk/deployments", "post"): [{"HTTPBearer": ["risk:read"]}],
        ("/v1/models", "get"): [{"HTTPBearer": ["risk:read"]}],
        ("/v1/models/reload", "post"): [{"HTTPBearer": ["models:reload"]}],
    }


def test_a_real_server_answers_401_to_a_huge_anonymous_body_and_413_to_a_long_stream(app):
    """uvicorn itself: the client gets the answer although the server never reads what it sends."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/risk/commits"
        huge = b'{"commits": [' + b'{"repo": "demo", "sha": "xyz"},' * 400_000 + b"]}"  # 12 MB, invalid
        with httpx.Client(timeout=30) as http:
            anonymous = http.post(url, content=huge, headers={"content-type": "application/json"})
            assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthenticated"
            stream = http.post(url, content=(b" " * 65536 for _ in range(200)), headers=_auth(READER))
            assert stream.status_code == 413 and stream.json()["code"] == "too_large"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize("repo", ["../outside", "/tmp/outside", "..", ".", "a/b"])
def test_a_repository_name_never_becomes_a_path_outside_the_data_root(client, repo):
    deployment = {"repo": repo, "service": "billing", "environment": "production", "commits": ["a" * 40]}
    for path, body in (
        ("/v1/risk/deployments", deployment),
        ("/v1/risk/commits", {"commits": [{"repo": repo, "sha": "a" * 40}]}),
    ):
        response = client.post(path, json=body, headers=_auth(READER))
        assert response.status_code == 422, (path, response.text)
        assert response.json()["errors"][0]["path"].endswith("repo")


@pytest.mark.parametrize("repo", ["../outside", "/tmp/outside", "..", "a\\b"])
def test_the_data_root_refuses_repository_names_that_leave_it(tmp_path, repo):
    from features.errors import BadConfig

    settings = load_settings(data_dir=tmp_path)
    with pytest.raises(BadConfig, match="not one folder name"):
        settings.repo_data_dir(repo)
    assert settings.repo_data_dir("my repo") == tmp_path / "my repo"
