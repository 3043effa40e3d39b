"""The monitor's batcher with a fake publisher: sizes, delays, drops and retries."""
from __future__ import annotations

import asyncio

from services.monitor.batcher import Batcher
from shared.codec import unpack
from shared.lifecycle import Counters
from shared.schemas.events import RawBatch, RawEvent


def event(i: int) -> RawEvent:
    return RawEvent(kind="exec", ts_ns=i, node="n", pid=i, tid=i, ppid=1, ns_pid=i, ns_ppid=1, uid=0,
                    gid=0, mntns=1, pidns=2, cgroup_id=3, comm="c", exe="/e", path="/p", ret=0)


class FakeJs:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, RawBatch, str]] = []

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("down")
        self.sent.append((subject, RawBatch.from_wire(unpack(payload)), msg_id))


async def run_batcher(b: Batcher, events: int, settle: float = 0.05) -> None:
    drain = asyncio.Event()
    task = asyncio.create_task(b.run(drain))
    for i in range(events):
        b.offer(event(i))
    await asyncio.sleep(settle)
    drain.set()
    await asyncio.wait_for(task, 5)


async def test_batches_are_cut_at_max_events() -> None:
    js, counters = FakeJs(), Counters()
    await run_batcher(Batcher(js.publish, "s", "n", counters, max_events=4, max_delay=0.01), 10)
    assert [len(b.events) for _, b, _ in js.sent] == [4, 4, 2]
    assert [b.seq for _, b, _ in js.sent] == [1, 2, 3]
    assert counters["events"] == 10 and counters["batches"] == 3


async def test_a_lone_event_is_sent_after_the_delay() -> None:
    js, loop = FakeJs(), asyncio.get_running_loop()
    b = Batcher(js.publish, "s", "n", Counters(), max_events=100, max_delay=0.02)
    drain = asyncio.Event()
    task = asyncio.create_task(b.run(drain))
    start = loop.time()
    b.offer(event(1))
    while not js.sent:
        await asyncio.sleep(0.001)
    assert 0.015 <= loop.time() - start < 0.2
    drain.set()
    await task


async def test_full_queue_drops_and_counts() -> None:
    js, counters = FakeJs(), Counters()
    b = Batcher(js.publish, "s", "n", counters, queue_size=3)
    assert [b.offer(event(i)) for i in range(5)] == [True, True, True, False, False]
    assert counters["lost_queue"] == 2 and counters["events"] == 3
    await run_batcher(b, 0)
    assert js.sent[0][1].lost_queue == 2


async def test_publish_is_retried_with_the_same_id_until_it_succeeds() -> None:
    """A NATS outage longer than any fixed retry budget costs no event while the service runs."""
    js, counters = FakeJs(failures=40), Counters()
    b = Batcher(js.publish, "s", "n", counters, retries=2, retry_delay=0.001, max_retry_delay=0.002)
    drain = asyncio.Event()
    task = asyncio.create_task(b.run(drain))
    b.offer(event(1))
    while not js.sent:
        await asyncio.sleep(0.005)
    drain.set()
    await asyncio.wait_for(task, 5)
    assert counters["publish_errors"] == 40 and counters.get("lost_publish", 0) == 0
    assert [(msg_id, len(batch.events)) for _, batch, msg_id in js.sent] == [("n:1", 1)]


async def test_at_shutdown_a_batch_still_failing_is_counted_lost() -> None:
    js, counters = FakeJs(failures=10), Counters()
    await run_batcher(Batcher(js.publish, "s", "n", counters, retries=2, retry_delay=0.001,
                              max_retry_delay=0.002), 3, settle=0.0)
    assert counters["lost_publish"] == 3 and not js.sent


async def test_offer_many_queues_what_fits_and_counts_the_rest() -> None:
    js, counters = FakeJs(), Counters()
    b = Batcher(js.publish, "s", "n", counters, max_events=2, queue_size=5)
    assert b.offer_many([event(i).to_wire() for i in range(3)]) == 3
    assert b.offer_many([event(i).to_wire() for i in range(3, 7)]) == 2
    assert counters["events"] == 5 and counters["lost_queue"] == 2 and b.queued() == 5
    await run_batcher(b, 0)
    assert [e["pid"] for _, batch, _ in js.sent for e in batch.events] == [0, 1, 2, 3, 4]
    assert [len(batch.events) for _, batch, _ in js.sent] == [2, 2, 1]
