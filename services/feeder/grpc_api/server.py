"""KubeArmor's gRPC LogService (package ``feeder``), so ``karmor logs`` can watch Bulwark.

WatchAlerts streams new alerts for Filter ``all``/``policy``; WatchLogs streams new logs for
``all``/``system``; any other Filter ends the stream at once (as KubeArmor does). WatchMessages streams
KubeArmor messages (``Type: Message``, ``Level``, ``HostIP``): the throttling notices. HealthCheck echoes
the nonce. Each watcher has its own bounded queue (drops counted as ``dropped_grpc``); a watcher that lost
records gets a ``SystemEvent`` record "dropped N ..." (a WARN Message on WatchMessages) when it catches
up. ``grpc.health.v1`` and, when wired, ``policy.PolicyService`` and ``policy.ProbeService`` are served on
the same port; TLS when a certificate and key are given, mutual TLS when a client CA is too. Record to
protobuf conversion: :mod:`services.feeder.grpc_api.convert`.

Every call goes through :class:`services.feeder.auth.GrpcAuthInterceptor`: the same tokens as REST
(``authorization: Bearer <token>`` metadata; READ for the watches and getProbeData, WRITE for
PolicyService). A caller that
passes no ``auth`` gets the configured tokens (``BULWARK_API_READ_TOKENS``/``_WRITE_TOKENS``), so no
caller can leave the port open by omission.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message as PbMessage
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.feeder.auth import READ, WRITE, ApiAuth, GrpcAuthInterceptor
from services.feeder.enrich import rfc3339
from services.feeder.grpc_api.convert import alert_to_pb, log_to_pb, message_to_pb, record_to_pb
from services.feeder.hub import AlertHub, Subscriber
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc

__all__ = ["LogService", "alert_to_pb", "log_to_pb", "build_grpc_server", "SERVICE_NAME", "record_to_pb",
           "configured_auth", "node_ip"]

SERVICE_NAME = "feeder.LogService"
GRPC_QUEUE = 1024
_ROUTE_PROBE = "192.0.2.1"  # TEST-NET-1: a UDP "connect" only asks the kernel for a route, sends nothing


def node_ip(configured: str = "") -> str:
    """The node's IP for KubeArmor's HostIP: ``configured`` (BULWARK_NODE_IP), else the source address
    of the default route, else 127.0.0.1 (a loopback-only machine has no other)."""
    if configured:
        return configured
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((_ROUTE_PROBE, 9))
            address = str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    return address if address and address != "0.0.0.0" else "127.0.0.1"


async def _next_or_stop(sub: Subscriber, stop: asyncio.Event) -> tuple[str, dict[str, Any]] | None:
    """The next queued item, or None once ``stop`` is set."""
    if stop.is_set():
        return None
    get = asyncio.ensure_future(sub.get())
    halt = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({get, halt}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halt.cancel()
        if not get.done():
            get.cancel()
    return get.result() if get.done() and not get.cancelled() else None


class LogService(pb_grpc.LogServiceServicer):
    """The LogService implementation over an :class:`AlertHub`."""

    def __init__(self, hub: AlertHub, queue_size: int = GRPC_QUEUE, *, cluster: str = "default",
                 node: str = "", host_ip: str = "127.0.0.1") -> None:
        self.hub, self.queue_size, self.cluster, self.node = hub, queue_size, cluster, node
        self.host_ip = host_ip
        self.closing = asyncio.Event()

    def _dropped(self, count: int, what: str) -> dict[str, Any]:
        now = time.time_ns()
        return {"Timestamp": now // 1_000_000_000, "UpdatedTime": rfc3339(now), "ClusterName": self.cluster,
                "HostName": self.node, "Type": "SystemEvent", "Operation": "Dropped", "Dropped": count,
                "Message": f"dropped {count} {what}: this client read too slowly", "Level": "WARN"}

    def _to_pb(self, record: dict[str, Any], cls: type[PbMessage]) -> Any:
        if cls is pb.Message:
            return message_to_pb(record, cluster=self.cluster, node=self.node, host_ip=self.host_ip)
        return record_to_pb(record, cls)

    async def _watch(self, kind: str, cls: type[PbMessage], what: str) -> AsyncIterator[Any]:
        with self.hub.subscribe("grpc", self.queue_size, kinds=frozenset({kind})) as sub:
            while (item := await _next_or_stop(sub, self.closing)) is not None:
                got, record = item
                yield self._to_pb(self._dropped(record["count"], what) if got == "dropped" else record, cls)

    async def HealthCheck(self, request: pb.NonceMessage, context: grpc.aio.ServicerContext) -> pb.ReplyMessage:
        """Deprecated health check: echo the nonce."""
        return pb.ReplyMessage(Retval=request.nonce)

    async def WatchAlerts(self, request: pb.RequestMessage,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Alert]:
        """Stream new alerts (Filter "all" or "policy"; anything else ends the stream at once)."""
        if request.Filter in ("all", "policy"):
            async for alert in self._watch("alert", pb.Alert, "alerts"):
                yield alert

    async def WatchLogs(self, request: pb.RequestMessage, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Log]:
        """Stream new logs (Filter "all" or "system"; anything else ends the stream at once)."""
        if request.Filter in ("all", "system"):
            async for record in self._watch("log", pb.Log, "logs"):
                yield record

    async def WatchMessages(self, request: pb.RequestMessage,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Message]:
        """Stream daemon messages as KubeArmor's (Type Message, Level, HostIP): throttling notices, drops."""
        async for message in self._watch("message", pb.Message, "messages"):
            yield message


def _credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    try:
        pair = [(key.read_bytes(), cert.read_bytes())]
        if client_ca is None:
            return grpc.ssl_server_credentials(pair)
        return grpc.ssl_server_credentials(pair, root_certificates=client_ca.read_bytes(),
                                           require_client_auth=True)
    except OSError as exc:
        raise OSError(f"gRPC TLS: cannot read certificate/key/client CA: {exc}") from exc


def configured_auth() -> tuple[ApiAuth, Path | None]:
    """The tokens, certificate scopes and client CA from the environment (see services.feeder.settings)."""
    from services.feeder.settings import load_feeder_settings, split_tokens

    s = load_feeder_settings()
    scopes = frozenset(x.strip() for x in s.grpc_cert_scopes.split(",") if x.strip())
    unknown = scopes - {READ, WRITE}
    if unknown:
        raise ValueError(f"BULWARK_GRPC_CERT_SCOPES: unknown scope(s) {sorted(unknown)} (read, write)")
    return ApiAuth(split_tokens(s.api_read_tokens), split_tokens(s.api_write_tokens), scopes), s.grpc_tls_client_ca


async def build_grpc_server(hub: AlertHub, host: str, port: int, *, queue_size: int = GRPC_QUEUE,
                            cluster: str = "default", node: str = "", tls_cert: Path | None = None,
                            tls_key: Path | None = None, policy_service: Any = None, auth: ApiAuth | None = None,
                            client_ca: Path | None = None, probe_service: Any = None,
                            host_ip: str | None = None) -> tuple[grpc.aio.Server, LogService]:
    """A started grpc.aio server with LogService, grpc.health.v1 (and PolicyService, ProbeService) on ``host:port``.

    ``auth`` None: the configured tokens, certificate scopes and client CA (:func:`configured_auth`);
    ``host_ip`` None: :func:`node_ip` of the configured BULWARK_NODE_IP.
    """
    if auth is None:
        auth, client_ca = configured_auth()
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("gRPC TLS needs both BULWARK_GRPC_TLS_CERT and BULWARK_GRPC_TLS_KEY")
    if client_ca is not None and tls_cert is None:
        raise ValueError("BULWARK_GRPC_TLS_CLIENT_CA needs BULWARK_GRPC_TLS_CERT and BULWARK_GRPC_TLS_KEY")
    if host_ip is None:
        from services.feeder.settings import load_feeder_settings

        host_ip = node_ip(load_feeder_settings().node_ip)
    server = grpc.aio.server(interceptors=[GrpcAuthInterceptor(auth)])
    service = LogService(hub, queue_size, cluster=cluster, node=node, host_ip=host_ip)
    pb_grpc.add_LogServiceServicer_to_server(service, server)
    from shared.proto_gen import policy_pb2_grpc

    if policy_service is not None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(policy_service, server)
    if probe_service is not None:
        policy_pb2_grpc.add_ProbeServiceServicer_to_server(probe_service, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await checker.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    if tls_cert is not None and tls_key is not None:
        bound = server.add_secure_port(address, _credentials(tls_cert, tls_key, client_ca))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {address}")
    await server.start()
    return server, service
