"""KubeArmor's gRPC LogService (package ``feeder``), so ``karmor logs`` can watch Bulwark.

WatchAlerts streams every new alert for Filter ``all``/``policy``; WatchLogs (``all``/``system``)
and WatchMessages stay open and stream nothing yet; HealthCheck echoes the nonce. Each watcher has
its own bounded queue (drops counted as ``dropped_grpc``). ``grpc.health.v1`` is served too.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.feeder.hub import AlertHub
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc

__all__ = ["LogService", "alert_to_pb", "build_grpc_server", "SERVICE_NAME"]

SERVICE_NAME = "feeder.LogService"
GRPC_QUEUE = 1024
_INT32 = (-(2**31), 2**31 - 1)
_ALERT_SCALARS = {f.name: f.cpp_type for f in pb.Alert.DESCRIPTOR.fields
                  if f.message_type is None and f.name != "ATags"}


def _clamp(value: Any) -> int:
    return max(_INT32[0], min(_INT32[1], int(value)))


def alert_to_pb(alert: dict[str, Any]) -> pb.Alert:
    """The protobuf Alert for an alert map (unknown keys ignored; EventID goes into EventData)."""
    out = pb.Alert()
    for name, cpp_type in _ALERT_SCALARS.items():
        value = alert.get(name)
        if value is None or value == "":
            continue
        if cpp_type == FieldDescriptor.CPPTYPE_INT32:
            setattr(out, name, _clamp(value))
        elif cpp_type == FieldDescriptor.CPPTYPE_INT64:
            setattr(out, name, int(value))
        else:
            setattr(out, name, str(value))
    out.ATags.extend(str(t) for t in alert.get("ATags", []))
    if alert.get("EventID"):
        out.EventData["EventID"] = str(alert["EventID"])
    return out


async def _next_or_stop(queue: asyncio.Queue[dict[str, Any]], stop: asyncio.Event) -> dict[str, Any] | None:
    """The next queued alert, or None once ``stop`` is set."""
    if stop.is_set():
        return None
    get = asyncio.ensure_future(queue.get())
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

    def __init__(self, hub: AlertHub, queue_size: int = GRPC_QUEUE) -> None:
        self.hub, self.queue_size = hub, queue_size
        self.closing = asyncio.Event()

    async def HealthCheck(self, request: pb.NonceMessage, context: grpc.aio.ServicerContext) -> pb.ReplyMessage:
        """Deprecated health check: echo the nonce."""
        return pb.ReplyMessage(Retval=request.nonce)

    async def WatchAlerts(self, request: pb.RequestMessage,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Alert]:
        """Stream new alerts (Filter "all" or "policy"; anything else ends the stream at once)."""
        if request.Filter not in ("all", "policy"):
            return
        with self.hub.subscribe("grpc", self.queue_size) as sub:
            while (alert := await _next_or_stop(sub.queue, self.closing)) is not None:
                yield alert_to_pb(alert)

    async def WatchLogs(self, request: pb.RequestMessage, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Log]:
        """Logs are not produced yet: the stream stays open (Filter "all"/"system") and sends nothing."""
        if request.Filter in ("all", "system"):
            await self.closing.wait()
        return
        yield  # pragma: no cover  (makes this an async generator)

    async def WatchMessages(self, request: pb.RequestMessage,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Message]:
        """Daemon messages are not produced yet: the stream stays open and sends nothing."""
        await self.closing.wait()
        return
        yield  # pragma: no cover


async def build_grpc_server(hub: AlertHub, host: str, port: int) -> tuple[grpc.aio.Server, LogService]:
    """A started grpc.aio server with LogService and grpc.health.v1 on ``host:port``."""
    server = grpc.aio.server()
    service = LogService(hub)
    pb_grpc.add_LogServiceServicer_to_server(service, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await checker.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    return server, service
