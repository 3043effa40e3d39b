"""The whole stack with one NATS user per service (``bulwark up --nats-auth``) and REST tokens: everything
still works, no service ever needed a subject it was not granted (the server logs every violation), and
the hostile checks of issue 14 fail: gRPC without a token (item 1), a node's user reading others' replies
or deleting their consumers (item 10), `bulwark run` without NATS credentials (item 11)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import nats
import pytest

from shared.nats.auth import user_name
from shared.nats.subjects import IDENTITY, RULES
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc
from shared.proto_gen import policy_pb2 as ppb
from shared.proto_gen import policy_pb2_grpc as ppb_grpc
from tests.e2e.stack import BIN, Stack, healthy_stack
from tests.natsperm import PROBE_NAME, probe

POLICIES = Path(__file__).parent / "policies"
READER, WRITER = "e2e-reader", "e2e-writer"
NODE = "auth-node"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secured_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with healthy_stack(tmp_path_factory.mktemp("auth") / "data", node=NODE, drop_nats_url=True,
                       extra_env={"BULWARK_NATS_AUTH": "true", "BULWARK_API_READ_TOKENS": READER,
                                  "BULWARK_API_WRITE_TOKENS": WRITER, "BULWARK_API_TOKEN": WRITER}) as s:
        yield s


def test_block_and_alert_with_per_service_users(secured_stack: Stack) -> None:
    s = secured_stack
    assert (s.data_dir / "nats-auth" / "passwords.json").stat().st_mode & 0o077 == 0
    assert s.cli("apply", "-f", str(POLICIES / "block-sleep.yaml")).returncode == 0
    blocked = s.cli("run", "--namespace", "demo", "--label", "app=demo", "--", "/usr/bin/sleep", "0.1")
    assert blocked.returncode != 0 and "Operation not permitted" in blocked.stderr, blocked.stderr
    deadline, alerts = time.monotonic() + 3, []
    while time.monotonic() < deadline and not alerts:
        alerts = httpx.get(f"{s.rest_url}/api/v1/alerts", params={"policy": "block-sleep"}, timeout=5,
                           headers={"Authorization": f"Bearer {READER}"}).json()
        time.sleep(0.05)
    assert len(alerts) == 1 and alerts[0]["Action"] == "Block", s.logs()
    nats_log = (s.data_dir / "logs" / "nats.log").read_text()
    assert "Violation" not in nats_log, [line for line in nats_log.splitlines() if "Violation" in line][:10]


def test_grpc_takes_the_rest_tokens(secured_stack: Stack) -> None:
    """Issue 14 item 1: containerPolicy applied and deleted for a caller with no credentials."""
    s = secured_stack
    body = json.dumps({"type": "ADDED", "object": {
        "metadata": {"name": "grpc-e2e", "namespace": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "demo"}}, "process": {"matchPaths": [{"path": "/usr/bin/ls"}]},
                 "action": "Block"}}}).encode()
    deleted = body.replace(b'"ADDED"', b'"DELETED"')

    async def check() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.grpc_port}") as channel:
            policies = ppb_grpc.PolicyServiceStub(channel)
            for data in (body, deleted):
                with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                    await policies.containerPolicy(ppb.policy(policy=data), timeout=15)
                assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as reader:
                    await policies.containerPolicy(ppb.policy(policy=data), timeout=15,
                                                   metadata=(("authorization", f"Bearer {READER}"),))
                assert reader.value.code() == grpc.StatusCode.PERMISSION_DENIED
            logs = pb_grpc.LogServiceStub(channel)
            for watch in (logs.WatchAlerts, logs.WatchLogs):
                with pytest.raises(grpc.aio.AioRpcError) as watcher:
                    async for _ in watch(pb.RequestMessage(Filter="all"), timeout=15):
                        pass
                assert watcher.value.code() == grpc.StatusCode.UNAUTHENTICATED
            writer = (("authorization", f"Bearer {WRITER}"),)
            assert (await policies.containerPolicy(ppb.policy(policy=body), metadata=writer, timeout=15)).status \
                == ppb.Applied
            assert (await policies.containerPolicy(ppb.policy(policy=deleted), metadata=writer, timeout=15)).status \
                == ppb.Deleted

    asyncio.run(check())


def test_a_nodes_user_reads_no_replies_and_deletes_no_consumers(secured_stack: Stack) -> None:
    """Issue 14 item 10, as ``monitor-<node>`` with its real password."""
    s = secured_stack

    async def check() -> None:
        spy = await probe(s.nats_url(user_name("monitor", NODE)))
        admin = await nats.connect(s.nats_url("admin"))
        try:
            await spy.nc.subscribe("_INBOX.>")
            await spy.violation("_INBOX.>")
            listed = await asyncio.to_thread(s.cli, "get", "policies")  # replies flow on private inboxes
            assert listed.returncode == 0, listed.stderr
            for stream in (IDENTITY.name, RULES.name):
                victims = [c.name for c in await admin.jsm().consumers_info(stream)]
                assert victims, f"the services follow {stream}"
                with pytest.raises(nats.errors.TimeoutError):
                    await spy.nc.jsm(timeout=1.0).delete_consumer(stream, victims[0])
                await spy.violation(f"$JS.API.CONSUMER.DELETE.{stream}.{victims[0]}")
                assert (await admin.jsm().consumer_info(stream, victims[0])).name == victims[0]
        finally:
            await spy.close()
            await admin.close()

    asyncio.run(check())


def test_bulwark_run_without_nats_credentials_fails_fast(secured_stack: Stack) -> None:
    """Issue 14 item 11: it looped printing "nats error" forever."""
    s = secured_stack
    env = {**s.env, "BULWARK_NATS_URL": f"nats://127.0.0.1:{s.nats_port}"}
    try:
        done = subprocess.run([str(BIN / "bulwark"), "run", "--namespace", "demo", "--label", "app=x", "--",
                               "/usr/bin/true"], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"bulwark run kept retrying: {exc.stderr!r}") from None
    assert done.returncode != 0
    assert "refused the login" in done.stderr and "authorization violation" in done.stderr, done.stderr


def test_no_service_needed_a_subject_it_was_not_granted(secured_stack: Stack) -> None:
    """Runs last: only the probes above were refused on purpose; no service's client ever was."""
    log = (secured_stack.data_dir / "logs" / "nats.log").read_text()
    named = [line for line in log.splitlines() if "Violation" in line and f'python3:{PROBE_NAME}"' not in line
             and "Authorization Violation" not in line]
    assert not named, named[:10]
