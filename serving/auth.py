"""API tokens: `Authorization: Bearer <token>`; configuration holds SHA-256 digests of long random tokens,
compared in constant time (no slow password hash on the hot path: the tokens are random, not passwords).
No or unknown token → 401; a token without a scope the route needs → 403. When: serving.admission."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence

from fastapi import HTTPException, status

from features.settings import ApiToken

READ, RELOAD = "risk:read", "models:reload"


def new_token() -> tuple[str, str]:
    """A fresh token (give it to the client) and its digest (put it in the configuration)."""
    token = "awo_" + secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authorize(authorization: str, tokens: Sequence[ApiToken], scopes: Iterable[str]) -> ApiToken:
    """The configured token presented in an `Authorization` header value, if it holds every scope."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"code": "unauthenticated", "message": "send Authorization: Bearer <token>"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    presented = digest(token.strip())
    match = None
    for candidate in tokens:  # every digest is compared, so timing does not tell which one matched
        if hmac.compare_digest(presented, candidate.sha256):
            match = candidate
    if match is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail={"code": "unauthenticated", "message": "unknown token"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    missing = [scope for scope in scopes if scope not in match.scopes]
    if missing:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail={"code": "forbidden", "message": f"token {match.name!r} lacks scope {missing[0]!r}"},
        )
    return match
