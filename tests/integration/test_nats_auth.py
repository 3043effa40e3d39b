"""Per-service NATS users against a real nats-server: each may do its work and nothing else."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bulwark.natsd import free_port, start_nats_server
from bulwark.procs import terminate
from shared.bus import connect, ensure_streams
from shared.natsauth import CLUSTER_ROLES, NODE_ROLES, render_authorization, user_name
from shared.subjects import POLICY_EVENTS, raw_events
from tests.natsperm import publish_ok

NODES = ["node-a", "node-b"]


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


async def test_a_nodes_monitor_publishes_only_its_own_raw_events(secured) -> None:
    url, log = secured
    admin = await connect(url("admin"), "admin")
    await ensure_streams(admin.jetstream())
    await admin.close()
    assert await publish_ok(url("monitor-node-a"), raw_events("node-a"))
    assert not await publish_ok(url("monitor-node-a"), raw_events("node-b"))
    assert not await publish_ok(url("feeder"), raw_events("node-a"))
    assert not await publish_ok(url("launcher"), POLICY_EVENTS)
    assert await publish_ok(url("policy"), POLICY_EVENTS)
    assert "Permissions Violation" in log.read_text() or "Violation" in log.read_text()


async def test_services_cannot_create_or_delete_streams(secured) -> None:
    url, _log = secured
    admin = await connect(url("admin"), "admin")
    await ensure_streams(admin.jetstream())
    await admin.close()
    nc = await connect(url("feeder"), "feeder")
    try:
        with pytest.raises(Exception):
            await nc.jetstream().add_stream(name="ROGUE", subjects=["rogue.>"], timeout=1.0)
        with pytest.raises(Exception):
            await nc.jetstream().delete_stream("BULWARK_RAW", timeout=1.0)
    finally:
        await nc.close()


async def test_a_wrong_password_is_refused(secured) -> None:
    url, _log = secured
    import nats

    with pytest.raises(Exception):
        await nats.connect(url("feeder").replace("pw-feeder", "nope"), connect_timeout=1.0, allow_reconnect=False,
                           max_reconnect_attempts=0)
