"""API access: bearer tokens with a read and a write scope (a write token may read too).

With no token configured every request is allowed (the API listens on loopback by default). With
tokens: no or an unknown token -> 401 (``WWW-Authenticate: Bearer``); a read token on a write route ->
403. The websocket takes the token from ``Authorization`` or ``?token=``. ``/healthz`` and the OpenAPI
document stay open (liveness probes and clients need them).
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from fastapi import HTTPException

__all__ = ["ApiAuth", "bearer_token", "READ", "WRITE"]

READ, WRITE = "read", "write"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _known(token: str, tokens: frozenset[str]) -> bool:
    found = False
    for candidate in tokens:  # compare with every one, in constant time each
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


@dataclass(frozen=True)
class ApiAuth:
    """The configured tokens."""

    read_tokens: frozenset[str] = field(default_factory=frozenset)
    write_tokens: frozenset[str] = field(default_factory=frozenset)

    @property
    def enabled(self) -> bool:
        """Whether any token is configured."""
        return bool(self.read_tokens or self.write_tokens)

    def scopes(self, token: str | None) -> frozenset[str]:
        """What ``token`` may do."""
        if not self.enabled:
            return frozenset({READ, WRITE})
        if not token:
            return frozenset()
        if _known(token, self.write_tokens):
            return frozenset({READ, WRITE})
        if _known(token, self.read_tokens):
            return frozenset({READ})
        return frozenset()

    def check(self, token: str | None, scope: str) -> None:
        """Raise HTTPException 401/403 unless ``token`` has ``scope``."""
        scopes = self.scopes(token)
        if scope in scopes:
            return
        if not scopes:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        raise HTTPException(403, f"this token lacks the {scope} scope")
