"""gRPC takes the same tokens as REST (issue 14 item 1): a real feeder with tokens, the real policy service
behind PolicyService, and `bulwark logs` sending its token.

Before: with REST tokens set, containerPolicy applied and deleted policies for a caller with no
credentials, and WatchAlerts/WatchLogs streamed to anyone.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.codec import pack
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import identity_events, raw_events
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc
from shared.proto_gen import policy_pb2 as ppb
from shared.proto_gen import policy_pb2_grpc as ppb_grpc
from shared.schemas import IdentityEvent
from tests.integration.test_feeder_live import _events
from tests.integration.test_feeder_pipeline import NODE, Feeder, _until, _workload
from tests.servicetools import service_log, start_service, stop_service, wait_healthy

READER, WRITER = "reader-token", "writer-token"
BIN = Path(sys.executable).parent
POLICY = {"metadata": {"name": "grpc-block", "namespace": "demo"},
          "spec": {"selector": {"matchLabels": {"app": "web"}}, "process": {"matchPaths": [{"path": "/usr/bin/sleep"}]},
                   "action": "Block"}}


@pytest.fixture
async def stack(nats_server: Any, tmp_path: Path):
    """The real policy service and a real feeder with a read and a write token."""
    nc = await connect(nats_server.url, "test")
    await ensure_streams(nc.jetstream())
    policy = start_service("policy", nats_server.url, tmp_path / "policy", node=NODE)
    feeder = Feeder(nats_server.url, tmp_path / "data", BULWARK_API_READ_TOKENS=READER,
                    BULWARK_API_WRITE_TOKENS=WRITER)
    try:
        await wait_healthy(nc, "policy", NODE)
        await feeder.ready()
        yield feeder
    finally:
        assert feeder.stop() == 0, feeder.log.read_text()[-3000:]
        assert stop_service(policy) == 0, service_log(tmp_path / "policy", "policy")
        await nc.close()


def _auth(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


async def _policy(channel: grpc.aio.Channel, event: str, token: str | None) -> int:
    body = json.dumps({"type": event, "object": POLICY}).encode()
    reply = await ppb_grpc.PolicyServiceStub(channel).containerPolicy(ppb.policy(policy=body), metadata=_auth(token),
                                                                      timeout=15)
    return reply.status


async def _code(call: Any) -> grpc.StatusCode:
    """The status a call ends with (OK for a stream that the server ends at once)."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_policy_calls_need_the_write_token(stack: Feeder) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        for event in ("ADDED", "DELETED"):
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await _policy(channel, event, None)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "missing or invalid bearer token" in anonymous.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await _policy(channel, event, "not-a-token")
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as reader:
                await _policy(channel, event, READER)
            assert reader.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lacks the write scope" in reader.value.details()
        assert await _policy(channel, "ADDED", WRITER) == ppb.Applied
        assert await _policy(channel, "DELETED", WRITER) == ppb.Deleted


async def test_watches_need_the_read_token(stack: Feeder) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = pb_grpc.LogServiceStub(channel)
        for watch in (stub.WatchAlerts, stub.WatchLogs, stub.WatchMessages):
            assert await _code(watch(pb.RequestMessage(Filter="all"))) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(watch(pb.RequestMessage(Filter="all"), metadata=_auth("nope"))) \
                == grpc.StatusCode.UNAUTHENTICATED
        # A filter that matches nothing ends the stream at once, once the token is accepted.
        for token in (READER, WRITER):
            assert await _code(stub.WatchAlerts(pb.RequestMessage(Filter="none"), metadata=_auth(token))) \
                == grpc.StatusCode.OK
            assert await _code(stub.WatchLogs(pb.RequestMessage(Filter="none"), metadata=_auth(token))) \
                == grpc.StatusCode.OK
        # Health stays open, like REST's /healthz.
        assert (await stub.HealthCheck(pb.NonceMessage(nonce=5))).Retval == 5
        served = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert served.status == health_pb2.HealthCheckResponse.SERVING


async def _run_logs(port: int, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(BIN / "bulwark"), "logs", "--gRPC", f"127.0.0.1:{port}", "--json", "--limit", "1",
                         "--logFilter", "policy", *extra], env=env, capture_output=True, text=True, timeout=60)


async def test_bulwark_logs_sends_the_token(nats_server: Any, stack: Feeder) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BULWARK_API_TOKEN"}
    refused = await _run_logs(stack.grpc_port, env)
    assert refused.returncode == 1 and "UNAUTHENTICATED: " in refused.stderr, refused.stderr
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        assert await _policy(channel, "ADDED", WRITER) == ppb.Applied  # the real policy service compiles it
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), time.time_ns()).to_wire()))
    try:
        watching = asyncio.create_task(_run_logs(stack.grpc_port, {**env, "BULWARK_API_TOKEN": READER}))
        k = 0
        while not watching.done():  # publish until the watcher, once subscribed, has seen one alert
            await js.publish(raw_events(NODE), _events(1, prefix=f"logs-{k}"))
            k += 1
            await asyncio.sleep(0.2)
        done = watching.result()
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[0])["PolicyName"] == "grpc-block"
        flagged = await _run_logs(stack.grpc_port, env, "--token", "nope")
        assert flagged.returncode == 1 and "UNAUTHENTICATED" in flagged.stderr, flagged.stderr
    finally:
        await nc.close()


NSP = {"metadata": {"name": "nsp-egress-block-dns"},
       "spec": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "*"}},
                "egress": [{"to": [{"ipBlock": {"cidr": "1.1.1.1/32"}}],
                            "ports": [{"port": "dns", "protocol": "UDP"}]}],
                "severity": 5, "action": "Block"}}


async def _network_policy(channel: grpc.aio.Channel, event: str, token: str | None, obj: Any = None) -> int:
    body = json.dumps({"type": event, "object": NSP if obj is None else obj}).encode()
    stub = ppb_grpc.PolicyServiceStub(channel)
    return (await stub.networkPolicy(ppb.policy(policy=body), metadata=_auth(token), timeout=15)).status


async def test_network_policy_is_served_with_the_write_token(stack: Feeder) -> None:
    """karmor vm policy add of a KubeArmorNetworkPolicy: before, UNIMPLEMENTED."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await _network_policy(channel, "ADDED", None)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as reader:
            await _network_policy(channel, "ADDED", READER)
        assert reader.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert await _network_policy(channel, "ADDED", WRITER) == ppb.Applied
        assert await _network_policy(channel, "ADDED", WRITER, {**NSP, "kind": "KubeArmorPolicy"}) == ppb.Invalid
        assert await _network_policy(channel, "DELETED", WRITER) == ppb.Deleted
        assert await _network_policy(channel, "DELETED", WRITER) == ppb.NotExist


async def test_probe_data_needs_the_read_token(stack: Feeder) -> None:
    """karmor probe's getProbeData: before, UNIMPLEMENTED."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = ppb_grpc.ProbeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.getProbeData(empty_pb2.Empty(), timeout=15)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies: list[Any] = []

        async def named() -> bool:  # the services' heartbeats name the node once the feeder has heard one
            replies.append(await stub.getProbeData(empty_pb2.Empty(), metadata=_auth(READER), timeout=15))
            return NODE in replies[-1].nodeMap

        await _until(named, 10, "the node in getProbeData")
        assert NODE in replies[-1].hostMap
