"""Per-service NATS users against a real nats-server: each may do its work and nothing else.

Refusals are asserted by the error the server names (a permissions violation for the exact subject, an
authorization violation for a login), never by a timeout alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from bulwark.natsserver.process import free_port, start_nats_server
from bulwark.procs import terminate
from shared.nats.auth import CLUSTER_ROLES, DURABLES, NODE_ROLES, inbox_prefix, render_authorization, user_name
from shared.nats.bus import NatsAuthRefused, connect, ensure_streams, request
from shared.nats.subjects import IDENTITY, POLICY_API, POLICY_EVENTS, RAW, RULES, raw_events
from tests.conftest import require_root
from tests.natsperm import probe, publish_ok
from tests.servicetools import service_log, start_service, stop_service, wait_healthy

NODES = ["node-a", "node-b"]
BIN = Path(sys.executable).parent


@pytest.fixture
def secured(tmp_path: Path):
    port = free_port()
    users = [user_name(r) for r in CLUSTER_ROLES] + [user_name(r, n) for n in NODES for r in NODE_ROLES]
    passwords = {u: f"pw-{u}" for u in users}
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: {json.dumps(str(tmp_path / "js"))} }}\n'
                    + render_authorization(passwords, NODES))
    log = tmp_path / "nats.log"
    proc = start_nats_server(port, tmp_path / "js", log_file=log, config=conf)
    try:
        yield (lambda user: f"nats://{user}:pw-{user}@127.0.0.1:{port}"), log
    finally:
        terminate(proc, grace=5)


async def _streams(url) -> None:
    admin = await connect(url("admin"), "admin")
    await ensure_streams(admin.jetstream())
    await admin.close()


async def test_a_nodes_monitor_publishes_only_its_own_raw_events(secured) -> None:
    url, log = secured
    await _streams(url)
    assert await publish_ok(url("monitor-node-a"), raw_events("node-a"))
    assert not await publish_ok(url("monitor-node-a"), raw_events("node-b"))
    assert not await publish_ok(url("feeder"), raw_events("node-a"))
    assert not await publish_ok(url("launcher"), POLICY_EVENTS)
    assert await publish_ok(url("policy"), POLICY_EVENTS)
    assert "Publish Violation" in log.read_text()


async def test_services_cannot_create_or_delete_streams(secured) -> None:
    url, _log = secured
    await _streams(url)
    p = await probe(url("feeder"))
    try:
        js = p.nc.jetstream(timeout=1.0)
        with pytest.raises(nats.errors.TimeoutError):  # the server drops the request: no reply comes
            await js.add_stream(name="ROGUE", subjects=["rogue.>"])
        await p.violation("$JS.API.STREAM.CREATE.ROGUE")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream("BULWARK_RAW")
        await p.violation("$JS.API.STREAM.DELETE.BULWARK_RAW")
    finally:
        await p.close()


async def test_a_wrong_password_is_refused_at_once(secured) -> None:
    url, _log = secured
    with pytest.raises(NatsAuthRefused, match="authorization violation"):
        await connect(url("feeder").replace("pw-feeder", "nope"), "t")
    with pytest.raises(NatsAuthRefused, match="'an anonymous client'"):
        await connect(url("feeder").replace("feeder:pw-feeder@", ""), "t")


async def test_replies_are_private_to_the_user_who_asked(secured, tmp_path: Path) -> None:
    """Issue 14 item 10: a node's user read the policy list from other services' replies on _INBOX.>."""
    url, _log = secured
    await _streams(url)
    policy = start_service("policy", url("policy"), tmp_path / "policy", node="node-a")
    admin = await connect(url("admin"), "admin")
    spy = await probe(url("monitor-node-a"))
    feeder = await connect(url("feeder"), "feeder")
    try:
        await wait_healthy(admin, "policy", "node-a")
        await spy.nc.subscribe("_INBOX.>")
        await spy.violation("_INBOX.>")
        await spy.nc.subscribe(f"{inbox_prefix('feeder')}.>")
        await spy.violation(f"{inbox_prefix('feeder')}.>")
        # The feeder's own request is answered on its private inbox, through the real policy service.
        reply = await request(feeder, POLICY_API, {"op": "list"})
        assert reply["ok"] is True and reply["policies"] == [], reply
        assert feeder._inbox_prefix.decode() == inbox_prefix("feeder")
    finally:
        await feeder.close()
        await spy.close()
        await admin.close()
        assert stop_service(policy) == 0, service_log(tmp_path / "policy", "policy")


async def test_consumers_are_deleted_only_by_their_owner(secured, tmp_path: Path) -> None:
    """Issue 14 item 10: a node's user deleted other services' consumers on BULWARK_IDENTITY and BULWARK_RULES."""
    url, _log = secured
    await _streams(url)
    policy = start_service("policy", url("policy"), tmp_path / "policy", node="node-a")
    admin = await connect(url("admin"), "admin")
    spy = await probe(url("monitor-node-a"))
    try:
        await wait_healthy(admin, "policy", "node-a")
        victims = [c.name for c in await admin.jsm().consumers_info(IDENTITY.name)]
        assert victims, "the policy service follows BULWARK_IDENTITY with a consumer"
        with pytest.raises(nats.errors.TimeoutError):
            await spy.nc.jsm(timeout=1.0).delete_consumer(IDENTITY.name, victims[0])
        await spy.violation(f"$JS.API.CONSUMER.DELETE.{IDENTITY.name}.{victims[0]}")
        assert (await admin.jsm().consumer_info(IDENTITY.name, victims[0])).name == victims[0]
        # Nor may it create (or rebind) a named consumer: only the feeder owns one, on BULWARK_RAW.
        with pytest.raises(nats.errors.TimeoutError):
            await spy.nc.jsm(timeout=1.0).add_consumer(RULES.name, durable_name="bulwark-feeder")
        await spy.violation(f"$JS.API.CONSUMER.DURABLE.CREATE.{RULES.name}.bulwark-feeder")
    finally:
        await spy.close()
        await admin.close()
        assert stop_service(policy) == 0, service_log(tmp_path / "policy", "policy")
    # The owner still has every right over its own durable consumer.
    feeder = await connect(url("feeder"), "feeder")
    try:
        durable = DURABLES["feeder"][RAW.name][0]
        psub = await feeder.jetstream().pull_subscribe(RAW.subjects[0], durable=durable, stream=RAW.name)
        with pytest.raises(nats.errors.TimeoutError):
            await psub.fetch(1, timeout=0.5)  # an empty stream: the fetch itself is allowed
        assert await feeder.jsm().delete_consumer(RAW.name, durable)
    finally:
        await feeder.close()


def test_bulwark_run_without_credentials_fails_fast(secured, tmp_path: Path) -> None:
    """Issue 14 item 11: `bulwark run` with a NATS URL lacking credentials looped on "nats error" forever."""
    require_root()
    url, _log = secured
    bare = url("launcher").replace("launcher:pw-launcher@", "")
    env = {**os.environ, "BULWARK_NATS_URL": bare, "BULWARK_DATA_DIR": str(tmp_path / "data"),
           "BULWARK_NODE_NAME": "node-a"}
    try:
        done = subprocess.run([str(BIN / "bulwark"), "run", "--namespace", "demo", "--label", "app=x", "--",
                               "/usr/bin/true"], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"bulwark run kept retrying: {exc.stderr!r}") from None
    assert done.returncode != 0
    assert "refused the login" in done.stderr and "authorization violation" in done.stderr, done.stderr


def test_the_durable_table_names_the_feeders_consumer() -> None:
    from services.feeder.ingest import DURABLE

    assert DURABLES["feeder"][RAW.name] == (DURABLE,)
