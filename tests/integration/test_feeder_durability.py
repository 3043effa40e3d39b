"""Never lost, never doubled: while a publisher sends raw events that match a Block rule, the feeder
is SIGKILLed mid-stream and restarted, and the real nats-server is restarted; every alert ends up in
the database exactly once (by EventID) and on the SIEM stream exactly once. SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from services.feeder.hub import AlertHub
from services.feeder.ingest import CATCH_UP_SECONDS, Ingestor
from services.feeder.siem import SiemSink
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.store.models import AlertRow, LogRow
from services.feeder.views import FeederState, StateFollower
from shared.codec import pack
from shared.lifecycle import Counters
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import ALERTS, identity_events, raw_events, rules_for_node
from shared.schemas import IdentityEvent, RawBatch, RawEvent, RuleSet, Workload, WorkloadRules
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, Feeder, _ruleset, _workload

BATCHES, PER_BATCH = 120, 5
TOTAL = BATCHES * PER_BATCH


def _batch(b: int) -> bytes:
    events = [RawEvent(kind="exec", ts_ns=time.time_ns(), node=NODE, pid=6000 + k, tid=6000 + k, ppid=1, ns_pid=k,
                       ns_ppid=1, uid=0, gid=0, mntns=MNTNS, pidns=PIDNS, cgroup_id=1, comm="sh", exe="/usr/bin/dash",
                       path="/usr/bin/sleep", ret=-1, syscall="execve", event_id=f"ev-{b}-{k}").to_wire()
              for k in range(PER_BATCH)]
    return pack(RawBatch(node=NODE, seq=b, events=events).to_wire())


async def _publish_all(url: str, progress: list[int]) -> None:
    """Publish every batch, retrying through outages (same Nats-Msg-Id, so a retry is not a second copy)."""
    nc = await connect(url, "publisher")
    js = nc.jetstream()
    for b in range(BATCHES):
        while True:
            try:
                await js.publish(raw_events(NODE), _batch(b), headers={"Nats-Msg-Id": f"raw-{b}"}, timeout=2)
                break
            except Exception:
                await asyncio.sleep(0.2)
        progress[0] = b + 1
        await asyncio.sleep(0.01)
    await nc.close()


def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*), count(DISTINCT event_id) FROM alerts")).one()
            return int(rows[0]), int(rows[1])
    except Exception:  # table not there yet
        return 0, 0
    finally:
        engine.dispose()


async def _until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_every_alert_exactly_once_through_feeder_and_nats_crashes(nats_server: Any, db_url: str,
                                                                        tmp_path: Path) -> None:
    env = {"BULWARK_DB_URL": db_url, "BULWARK_ALERT_THROTTLING": "false", "BULWARK_INGEST_ACK_WAIT_SECONDS": "2"}
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), time.time_ns()).to_wire()))
    await js.publish(rules_for_node(NODE), pack(_ruleset().to_wire()))
    await nc.close()
    feeder = Feeder(nats_server.url, tmp_path / "data", **env)
    await feeder.ready()
    progress = [0]
    publisher = asyncio.create_task(_publish_all(nats_server.url, progress))
    try:
        await _until(lambda: _counts(db_url)[0] >= TOTAL // 4, 30, "a quarter of the alerts")
        feeder.kill()  # mid-stream: batches in flight are neither acked nor (maybe) committed
        killed_at = _counts(db_url)[0]
        feeder = Feeder(nats_server.url, tmp_path / "data", **env)
        await feeder.ready()
        await _until(lambda: progress[0] >= BATCHES // 2, 30, "half published")
        await asyncio.to_thread(nats_server.restart)
        await asyncio.wait_for(publisher, 60)
        await _until(lambda: _counts(db_url)[0] >= TOTAL, 60, f"all {TOTAL} alerts")
        await asyncio.sleep(1.0)  # anything late would be a double
        assert _counts(db_url) == (TOTAL, TOTAL)
        assert killed_at < TOTAL
        engine = create_engine(db_url)
        with engine.connect() as conn:
            ids = {r[0] for r in conn.execute(text("SELECT event_id FROM alerts"))}
        engine.dispose()
        assert ids == {f"ev-{b}-{k}" for b in range(BATCHES) for k in range(PER_BATCH)}

        nc = await connect(nats_server.url, "test-check")
        js = nc.jetstream()

        async def siem_count() -> int:
            return int((await js.stream_info(ALERTS.name)).state.messages)

        deadline = time.monotonic() + 20
        while await siem_count() < TOTAL and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await siem_count() == TOTAL  # none lost, none doubled on the SIEM stream either
        await nc.close()
    finally:
        publisher.cancel()
        code = feeder.stop()
        assert code == 0, feeder.log.read_text()[-3000:]



def _host_only() -> tuple[IdentityEvent, RuleSet]:
    host = Workload(id=f"host-{NODE}", name=NODE, namespace="", kind="host", node=NODE, mntns=0, pidns=0,
                    source="host")
    entry = WorkloadRules(workload_id=host.id, mntns=0, pidns=0)
    return (IdentityEvent("started", host, time.time_ns()),
            RuleSet(node=NODE, version=0, policy_seq=0, identity_seq=1, workloads={host.id: entry}))


@pytest.mark.parametrize("views", ["empty", "stalled-before-the-workload"])
async def test_no_batch_is_judged_before_the_views_hold_its_rules(nats_server: Any, tmp_path: Path,
                                                                  views: str) -> None:
    """The ingestor judges nothing while its identity and rules views are behind their streams: empty (a
    restart on a backlog) or stalled while they knew only the host (a follower NATS has not yet resumed
    after a restart; the host's entry must not stand in for the unknown workload). The batch stays
    unacked, and once the views have caught up every event is an alert."""
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    counters = Counters()
    follower = StateFollower(nc, js, FeederState())
    store = RecordStore(make_engine(f"sqlite:///{tmp_path / 'records.db'}"))
    ingestor = Ingestor(js, nc, follower, store, AlertHub(counters), counters, cluster="default",
                        siem=SiemSink(js, counters))
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    if views != "empty":  # the ingestor starts on caught-up views that know the host, then they stall
        host_event, host_rules = _host_only()
        await js.publish(identity_events(NODE), pack(host_event.to_wire()))
        await js.publish(rules_for_node(NODE), pack(host_rules.to_wire()))
        await follower.start()
        task = asyncio.create_task(ingestor.run(stop))
        assert await follower.wait_caught_up(10)
        await asyncio.sleep(0.5)
        await follower.stop()
    await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), time.time_ns()).to_wire()))
    await js.publish(rules_for_node(NODE), pack(_ruleset().to_wire()))
    for b in range(3):
        await js.publish(raw_events(NODE), _batch(b), headers={"Nats-Msg-Id": f"raw-{b}"})
    if task is None:
        task = asyncio.create_task(ingestor.run(stop))
    try:
        await asyncio.sleep(2 * CATCH_UP_SECONDS + 1.0)  # long enough for a judgement without the rules
        assert store.count(AlertRow) == 0 and store.count(LogRow) == 0
        await follower.start()
        await _until(lambda: store.count(AlertRow) >= 3 * PER_BATCH, 30, "the alerts")
        assert store.count(AlertRow) == 3 * PER_BATCH and store.count(LogRow) == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await follower.stop()
        await nc.close()
