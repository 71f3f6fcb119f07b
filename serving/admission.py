"""Admission before the body: who calls, with which scopes, and how many bytes they may send.

FastAPI reads and validates a request body before it runs any dependency, so an anonymous caller would
learn the schema from 422s and make the server parse megabytes before a 401. `AdmittedRoute`, the route
class of every router, checks the bearer token and its scopes, then the declared `Content-Length`, before
the route's handler reads a byte; a body streamed without a length is cut off at the limit."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from starlette.types import Message, Receive

from features.settings import ApiToken
from serving.auth import authorize
from serving.deps import get_state

# Declares the scheme in OpenAPI; the check itself is authorize(), run by AdmittedRoute.
bearer = HTTPBearer(auto_error=False, description="an API token made by `awo token`")

_ADMITTED = "awo.caller"  # request scope key: the token AdmittedRoute admitted


def caller(
    security_scopes: SecurityScopes,
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiToken:
    """The calling token. A route declares the scopes it needs next to itself:
    `dependencies=[Security(caller, scopes=[READ])]`."""
    admitted = request.scope.get(_ADMITTED)
    if isinstance(admitted, ApiToken):
        return admitted
    # Defence in depth: create_app refuses routes of another class, so this runs only if `caller` is used
    # on a route built elsewhere; the token is still checked, though after the body.
    tokens = get_state(request).settings.api_tokens
    return authorize(request.headers.get("authorization", ""), tokens, security_scopes.scopes)


def required_scopes(dependant: Dependant) -> list[str] | None:
    """The scopes a route's `caller` dependencies ask for; None if it has none (an open route)."""
    found: list[str] | None = None
    for sub in dependant.dependencies:
        if sub.call is caller:
            scopes: list[str] | None = [*(sub.parent_oauth_scopes or []), *(sub.own_oauth_scopes or [])]
        else:
            scopes = required_scopes(sub)
        if scopes is not None:
            found = list(dict.fromkeys([*(found or []), *scopes]))
    return found


def too_large(message: str) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail={"code": "too_large", "message": message})


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    # isascii: str.isdigit() accepts digits int() refuses ("²"); anything else is left to the byte cap.
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def capped(receive: Receive, limit: int) -> Receive:
    """`receive` refusing (413) the chunk that takes the body over `limit` bytes, before the app sees it."""
    received = 0

    async def receive_capped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(f"the body exceeds {limit} bytes")
        return message

    return receive_capped


class AdmittedRoute(APIRoute):
    """A route that admits a request (token, scopes, body size) before its handler reads the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        scopes = required_scopes(self.dependant)

        async def admit_then_handle(request: Request) -> Response:
            settings = get_state(request).settings
            if scopes is not None:
                header = request.headers.get("authorization", "")
                request.scope[_ADMITTED] = authorize(header, settings.api_tokens, scopes)
            limit = settings.max_body_bytes
            length = declared_length(request)
            if length is not None and length > limit:
                raise too_large(f"the body declares {length} bytes; at most {limit}")
            return await handle(Request(request.scope, capped(request.receive, limit)))

        return admit_then_handle
