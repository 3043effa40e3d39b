"""The ingestor against a real nats-server: a backlog of raw batches (what a burst leaves while the
feeder is busy) is judged batch by batch but stored in one transaction and settled message by
message; live clients get new alerts before the batch's logs are stored and before any SIEM copy is
acknowledged; the next batch is stored while the last one's copies are under way, and stopping waits
for them. No wall time in any assertion: the store and the SIEM sink are observed (held at gates),
not timed."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.feeder.hub import AlertHub
from services.feeder.ingest import DURABLE, Ingestor
from services.feeder.siem import SiemSink
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.store.models import AlertRow
from services.feeder.views import FeederState, StateFollower
from shared.codec import pack
from shared.lifecycle import Counters
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import DEAD_LETTER, RAW, identity_events, raw_events, rules_for_node
from shared.schemas import IdentityEvent, RawBatch, RawEvent
from tests.integration.test_feeder_durability import PER_BATCH, _batch
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, _ruleset, _workload


class CountingStore(RecordStore):
    """A real store that records the size of every insert_records call (one call = one transaction)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[int] = []

    def insert_records(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Any:
        self.calls.append(len(alerts) + len(logs))
        return super().insert_records(alerts, logs)


class LogsHeldStore(RecordStore):
    """A real store whose inserts of logs wait (in the store's thread) until the test opens the gate."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = threading.Event()
        self.logs_waiting = threading.Event()
        self.calls: list[tuple[int, int]] = []

    def insert_records(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Any:
        self.calls.append((len(alerts), len(logs)))
        if logs:
            self.logs_waiting.set()
            self.gate.wait(30)
        return super().insert_records(alerts, logs)


def _mixed_batch() -> bytes:
    """One blocked exec (an alert) and three allowed ones (logs: the workload's processes are visible)."""
    events = [RawEvent(kind="exec", ts_ns=time.time_ns(), node=NODE, pid=7000 + k, tid=7000 + k, ppid=1, ns_pid=k,
                       ns_ppid=1, uid=0, gid=0, mntns=MNTNS, pidns=PIDNS, cgroup_id=1, comm="sh",
                       exe="/usr/bin/dash", path="/usr/bin/true" if k else "/usr/bin/sleep", ret=0 if k else -1,
                       syscall="execve", event_id=f"mixed-{k}").to_wire() for k in range(4)]
    return pack(RawBatch(node=NODE, seq=1, events=events).to_wire())


class GatedSiem(SiemSink):
    """The real SIEM sink, held at a gate: publishes wait until the test opens it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> int:
        self.waiting.set()
        await self.gate.wait()
        return await super().publish(alerts, logs)


@pytest.fixture
async def bus(nats_server: Any) -> AsyncIterator[Any]:
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), time.time_ns()).to_wire()))
    await js.publish(rules_for_node(NODE), pack(_ruleset().to_wire()))
    try:
        yield nc, js
    finally:
        await nc.close()


async def _pending(js: Any) -> tuple[int, int]:
    """(messages not yet delivered, delivered and not acked) of the feeder's durable consumer."""
    info = await js.consumer_info(RAW.name, DURABLE)
    return int(info.num_pending), int(info.num_ack_pending)


async def test_a_backlog_is_stored_in_one_transaction_and_every_message_settled(bus: Any, tmp_path: Path) -> None:
    nc, js = bus
    for b in range(6):
        await js.publish(raw_events(NODE), _batch(b), headers={"Nats-Msg-Id": f"raw-{b}"})
    await js.publish(raw_events(NODE), b"\xc1 not msgpack")              # garbage in the middle
    await js.publish(raw_events(NODE), _batch(0), headers={"Nats-Msg-Id": "raw-0-again"})  # a redelivery
    dead: list[bytes] = []

    async def on_dead(msg: Any) -> None:
        dead.append(msg.data)

    await nc.subscribe(DEAD_LETTER, cb=on_dead)
    counters = Counters()
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'records.db'}")
    store = CountingStore(engine)
    hub = AlertHub(counters)
    ingestor = Ingestor(js, nc, follower, store, hub, counters, cluster="default", siem=SiemSink(js, counters))
    stop = asyncio.Event()
    with hub.subscribe("ws", maxsize=1000) as live:
        task = asyncio.create_task(ingestor.run(stop))
        try:
            while store.count(AlertRow) < 6 * PER_BATCH or await _pending(js) != (0, 0):
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await follower.stop()
            engine.dispose()
        pushed = [live.queue.get_nowait()[1]["EventID"] for _ in range(live.queue.qsize())]
    assert store.calls == [7 * PER_BATCH]              # one transaction for the whole backlog
    assert sorted(pushed) == sorted(f"ev-{b}-{k}" for b in range(6) for k in range(PER_BATCH))
    assert counters["events"] == 7 * PER_BATCH and counters["duplicates"] == PER_BATCH
    assert counters["dead_letters"] == 1 and dead == [b"\xc1 not msgpack"]
    assert counters["siem_alerts"] == 7 * PER_BATCH     # every message's copies (JetStream drops the repeats)


async def test_live_clients_get_new_alerts_before_the_siem_copies_are_acknowledged(bus: Any,
                                                                                    tmp_path: Path) -> None:
    nc, js = bus
    await js.publish(raw_events(NODE), _batch(7), headers={"Nats-Msg-Id": "raw-7"})
    counters = Counters()
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'records.db'}")
    hub = AlertHub(counters)
    siem = GatedSiem(js, counters)
    ingestor = Ingestor(js, nc, follower, RecordStore(engine), hub, counters, cluster="default", siem=siem)
    stop = asyncio.Event()
    with hub.subscribe("ws", maxsize=100) as live:
        task = asyncio.create_task(ingestor.run(stop))
        try:
            await asyncio.wait_for(siem.waiting.wait(), 30)  # the SIEM publish is held at the gate...
            assert live.queue.qsize() == PER_BATCH              # ...and the alerts are out already
            assert await _pending(js) == (0, 1)                 # the message is not acked before the SIEM's
            siem.gate.set()
            while await _pending(js) != (0, 0):
                await asyncio.sleep(0.05)
        finally:
            siem.gate.set()
            stop.set()
            await asyncio.wait_for(task, 30)
            await follower.stop()
            engine.dispose()
    assert counters["siem_alerts"] == PER_BATCH


async def test_the_next_batch_is_stored_while_the_siem_copies_of_the_last_are_under_way(bus: Any,
                                                                                      tmp_path: Path) -> None:
    nc, js = bus
    await js.publish(raw_events(NODE), _batch(8), headers={"Nats-Msg-Id": "raw-8"})
    counters = Counters()
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'records.db'}")
    store = RecordStore(engine)
    hub = AlertHub(counters)
    siem = GatedSiem(js, counters)
    ingestor = Ingestor(js, nc, follower, store, hub, counters, cluster="default", siem=siem)
    stop = asyncio.Event()
    with hub.subscribe("ws", maxsize=100) as live:
        task = asyncio.create_task(ingestor.run(stop))
        try:
            await asyncio.wait_for(siem.waiting.wait(), 30)     # the first batch's copies are held
            await js.publish(raw_events(NODE), _batch(9), headers={"Nats-Msg-Id": "raw-9"})
            while live.queue.qsize() < 2 * PER_BATCH:           # the second batch is stored and pushed anyway
                await asyncio.sleep(0.05)
            assert store.count(AlertRow) == 2 * PER_BATCH
            assert await _pending(js) == (0, 2)                 # neither is acked before its copies
            siem.gate.set()
            while await _pending(js) != (0, 0):
                await asyncio.sleep(0.05)
        finally:
            siem.gate.set()
            stop.set()
            await asyncio.wait_for(task, 30)
            await follower.stop()
            engine.dispose()
    assert counters["siem_alerts"] == 2 * PER_BATCH


async def test_stopping_waits_for_the_batches_settling_in_the_background(bus: Any, tmp_path: Path) -> None:
    nc, js = bus
    await js.publish(raw_events(NODE), _batch(10), headers={"Nats-Msg-Id": "raw-10"})
    counters = Counters()
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'records.db'}")
    siem = GatedSiem(js, counters)
    ingestor = Ingestor(js, nc, follower, RecordStore(engine), AlertHub(counters), counters, cluster="default",
                        siem=siem)
    waiting_for_settling = asyncio.Event()
    settled = ingestor.settled

    async def observed_settled() -> None:
        waiting_for_settling.set()
        await settled()

    ingestor.settled = observed_settled  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(ingestor.run(stop))
    try:
        await asyncio.wait_for(siem.waiting.wait(), 30)
        stop.set()
        await asyncio.wait_for(waiting_for_settling.wait(), 30)   # the loop ended...
        assert not task.done() and len(ingestor._settling) == 1   # ...and run waits for the held batch
        siem.gate.set()
        await asyncio.wait_for(task, 30)
        assert counters["siem_alerts"] == PER_BATCH              # copied before run returned
        while await _pending(js) != (0, 0):                      # and acked (the server applies acks apart)
            await asyncio.sleep(0.05)
    finally:
        siem.gate.set()
        stop.set()
        await asyncio.wait_for(task, 30)
        await follower.stop()
        engine.dispose()


async def test_a_batchs_alerts_are_pushed_before_its_logs_are_stored(bus: Any, tmp_path: Path) -> None:
    nc, js = bus
    await js.publish(raw_events(NODE), _mixed_batch(), headers={"Nats-Msg-Id": "raw-mixed"})
    counters = Counters()
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
    engine = make_engine(f"sqlite:///{tmp_path / 'records.db'}")
    store = LogsHeldStore(engine)
    hub = AlertHub(counters)
    ingestor = Ingestor(js, nc, follower, store, hub, counters, cluster="default", siem=SiemSink(js, counters))
    stop = asyncio.Event()
    with hub.subscribe("ws", maxsize=100, kinds=frozenset({"alert", "log"})) as live:
        task = asyncio.create_task(ingestor.run(stop))
        try:
            first = await asyncio.wait_for(live.get(), 30)
            assert first[0] == "alert" and first[1]["EventID"] == "mixed-0"
            assert await asyncio.to_thread(store.logs_waiting.wait, 30)   # the logs' insert, held
            assert store.calls == [(1, 0), (0, 3)] and store.count(AlertRow) == 1 and live.queue.empty()
            store.gate.set()
            got = [await asyncio.wait_for(live.get(), 30) for _ in range(3)]
            assert [(kind, rec["EventID"]) for kind, rec in got] == [("log", f"mixed-{k}") for k in (1, 2, 3)]
            while await _pending(js) != (0, 0):
                await asyncio.sleep(0.05)
        finally:
            store.gate.set()
            stop.set()
            await asyncio.wait_for(task, 30)
            await follower.stop()
            engine.dispose()
