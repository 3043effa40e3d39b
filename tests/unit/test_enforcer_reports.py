"""The enforcers' report path: a bounded queue that counts what it refuses, and a publisher that keeps
retrying through a NATS outage and counts a loss only at shutdown."""
from __future__ import annotations

import asyncio

from services.enforcer.reports.publish import report_loop
from services.enforcer.reports.queue import ReportQueue
from shared.codec import unpack
from shared.lifecycle import Counters
from shared.schemas.events import RawEvent


class Report:
    """A report that knows its raw-event form (as AppArmor's and BPF-LSM's do)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def to_raw_event(self, node: str, _offset: int, _boot_id: str) -> RawEvent:
        return RawEvent(kind="enforce", ts_ns=1, node=node, pid=self.pid, tid=self.pid, ppid=1, ns_pid=1,
                        ns_ppid=0, uid=0, gid=0, mntns=7, pidns=8, cgroup_id=0, comm="c", exe="/e", path="/p",
                        ret=-13)


class FlakyPublisher:
    def __init__(self, failures: int) -> None:
        self.failures, self.sent = failures, []

    async def __call__(self, subject: str, payload: bytes, msg_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("nats down")
        self.sent.append((msg_id, [e["pid"] for e in unpack(payload)["events"]]))


def test_a_full_queue_refuses_and_counts() -> None:
    counters = Counters()
    queue: ReportQueue[int] = ReportQueue(counters, limit=2)
    assert [queue.put(i) for i in range(4)] == [True, True, False, False]
    assert counters["reports_lost"] == 2 and queue.take() == [0, 1] and queue.take() == []


async def test_reports_survive_a_long_publish_outage() -> None:
    counters, stop = Counters(), asyncio.Event()
    queue: ReportQueue[Report] = ReportQueue(counters)
    publish = FlakyPublisher(failures=8)
    queue.put(Report(1))
    task = asyncio.create_task(report_loop(queue.take, publish, "n", stop, counters, interval=0.01,
                                           retry_delay=0.001, retry_max_delay=0.002))
    while not publish.sent:
        await asyncio.sleep(0.01)
    queue.put(Report(2))
    while len(publish.sent) < 2:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert [pids for _, pids in publish.sent] == [[1], [2]]
    assert counters["kills_published"] == 2 and counters["kills_lost"] == 0
    assert counters["report_publish_errors"] == 8


async def test_at_shutdown_an_unpublishable_batch_is_counted_lost() -> None:
    counters, stop = Counters(), asyncio.Event()
    stop.set()
    publish = FlakyPublisher(failures=100)
    await asyncio.wait_for(report_loop(lambda: [Report(1), Report(2)], publish, "n", stop, counters,
                                             retry_delay=0.001, retry_max_delay=0.002), 10)
    assert counters["kills_lost"] == 2 and not publish.sent
