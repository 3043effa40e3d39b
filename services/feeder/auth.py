"""API access: bearer tokens with a read and a write scope (a write token may read too), the same on
REST, the websocket and gRPC.

With no token configured every request is allowed (the listeners bind loopback by default). With
tokens: no or an unknown token -> 401 / gRPC UNAUTHENTICATED (``WWW-Authenticate: Bearer``); a read
token on a write route -> 403 / PERMISSION_DENIED. REST and gRPC take ``Authorization: Bearer <token>``
(gRPC: the ``authorization`` metadata key); the websocket also ``?token=``. On gRPC a client certificate
verified against the configured client CA (mutual TLS, what KubeArmor's karmor sends) grants the
configured certificate scopes. ``/healthz``, the OpenAPI document, ``grpc.health.v1`` and the LogService's
nonce HealthCheck stay open (liveness probes and clients need them).
"""
from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi import HTTPException

__all__ = ["ApiAuth", "bearer_token", "READ", "WRITE", "GrpcAuthInterceptor", "GRPC_SCOPES", "grpc_scope",
           "metadata_token"]

READ, WRITE = "read", "write"

# The scope each gRPC method needs; None: open. Methods not listed (a service added later) need WRITE.
GRPC_SCOPES: dict[str, str | None] = {
    "/feeder.LogService/WatchAlerts": READ,
    "/feeder.LogService/WatchLogs": READ,
    "/feeder.LogService/WatchMessages": READ,
    "/feeder.LogService/HealthCheck": None,
    "/policy.PolicyService/containerPolicy": WRITE,
    "/policy.PolicyService/hostPolicy": WRITE,
    "/policy.PolicyService/networkPolicy": WRITE,
    "/policy.ProbeService/getProbeData": READ,
}
_OPEN_SERVICES = ("/grpc.health.v1.Health/",)


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
    """The configured tokens (and what a verified gRPC client certificate may do)."""

    read_tokens: frozenset[str] = field(default_factory=frozenset)
    write_tokens: frozenset[str] = field(default_factory=frozenset)
    cert_scopes: frozenset[str] = field(default_factory=frozenset)

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

    def denial(self, token: str | None, scope: str, *, extra: frozenset[str] = frozenset()) -> tuple[int, str] | None:
        """None when ``token`` (plus ``extra`` scopes) has ``scope``, else (401 or 403, the reason)."""
        scopes = self.scopes(token) | extra
        if scope in scopes:
            return None
        if not scopes:
            return 401, "missing or invalid bearer token"
        return 403, f"this token lacks the {scope} scope"

    def check(self, token: str | None, scope: str) -> None:
        """Raise HTTPException 401/403 unless ``token`` has ``scope``."""
        denied = self.denial(token, scope)
        if denied is None:
            return
        status, reason = denied
        raise HTTPException(status, reason, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def grpc_scope(method: str) -> str | None:
    """The scope a gRPC method needs (None: open); unknown methods need WRITE (fail closed)."""
    if method.startswith(_OPEN_SERVICES):
        return None
    return GRPC_SCOPES.get(method, WRITE)


def metadata_token(metadata: Any) -> str | None:
    """The bearer token of a call's ``authorization`` metadata, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            return bearer_token(value if isinstance(value, str) else value.decode(errors="replace"))
    return None


def _peer_verified(context: grpc.aio.ServicerContext) -> bool:
    """Whether the peer presented a client certificate that the server verified (mutual TLS)."""
    try:
        auth = context.auth_context()
    except Exception:  # no TLS on this call
        return False
    return bool(auth.get("x509_pem_cert") or auth.get("x509_common_name"))


_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's token (or verified client certificate) against the scope its method needs."""

    def __init__(self, auth: ApiAuth) -> None:
        self.auth = auth

    async def _deny(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Abort the call unless it may run ``method``."""
        scope = grpc_scope(method)
        if scope is None:
            return
        extra = self.auth.cert_scopes if self.auth.cert_scopes and _peer_verified(context) else frozenset()
        denied = self.auth.denial(metadata_token(context.invocation_metadata()), scope, extra=extra)
        if denied is not None:
            status, reason = denied
            if status == 401:
                await context.send_initial_metadata((("www-authenticate", "Bearer"),))
            await context.abort(_CODES[status], f"{method}: {reason}")

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        """The method's handler, wrapped so that the check runs first inside the call."""
        handler = await continuation(details)
        if handler is None or grpc_scope(details.method) is None:
            return handler
        return _guarded(handler, details.method, self._deny)


def _guarded(handler: Any, method: str, deny: Callable[[str, Any], Awaitable[None]]) -> Any:
    """A copy of ``handler`` whose behaviour calls ``deny`` before the real one."""
    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        real_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await deny(method, context)
            return await real_uu(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.unary_stream:
        real_us = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            await deny(method, context)
            async for item in real_us(request, context):
                yield item
        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if handler.stream_unary:
        real_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            await deny(method, context)
            return await real_su(requests, context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    real_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        await deny(method, context)
        async for item in real_ss(requests, context):
            yield item
    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
