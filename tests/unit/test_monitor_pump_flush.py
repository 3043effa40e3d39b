"""When the monitor cuts a batch: as soon as a pump pass leaves the ring buffer empty (not after a fixed
window), when it is full, or when its oldest event is ``max_delay`` old. Asserted by the flush reason
counters with a frozen, injected clock: no wall time in any assertion."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from services.monitor.batcher import Batcher
from services.monitor.decode.records import RecordDecoder
from services.monitor.pump import Pump
from shared.codec import unpack
from shared.lifecycle import Counters
from tests.unit.test_monitor_pump import CTX, FakeProbes
from tests.unit.test_monitor_records import chunk_of, sys_rec


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """A publisher that keeps each batch's event paths and wakes whoever waits for the next one."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.arrived = asyncio.Event()

    async def publish(self, subject: str, payload: bytes, msg_id: str) -> None:
        self.batches.append([e["path"] for e in unpack(payload)["events"]])
        self.arrived.set()

    async def next(self) -> list[str]:
        """The next batch (a hang guard only: the test fails on a lost batch, never on a slow one)."""
        await asyncio.wait_for(self.arrived.wait(), 30)
        self.arrived.clear()
        return self.batches[-1]


def files(*names: str) -> tuple[bytes, list[int]]:
    return chunk_of(*(sys_rec(5, 257, name=f"/{n}") for n in names))


async def settle(rounds: int = 50) -> None:
    """Let every ready task run (no time passes on the injected clock)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture
async def running() -> AsyncIterator[tuple[asyncio.Event, list[asyncio.Task[None]]]]:
    drain = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    yield drain, tasks
    drain.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


def make(sink: Sink, clock: Clock, counters: Counters, probes: FakeProbes, *, chunk: int = 4096,
         drained: bool = True, max_events: int = 512, max_delay: float = 0.02) -> tuple[Batcher, Pump]:
    batcher = Batcher(sink.publish, "s", "n1", counters, max_events=max_events, max_delay=max_delay,
                      flush_when_drained=drained, clock=clock)
    return batcher, Pump(probes, RecordDecoder(CTX), batcher, counters, chunk=chunk, interval=0.002,
                         idle_interval=0.004)


async def test_a_lone_event_goes_out_when_the_buffer_is_drained_not_after_the_window(running) -> None:
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    batcher, pump = make(sink, clock, counters, FakeProbes([files("a")]), max_delay=3600.0)
    tasks.append(asyncio.create_task(batcher.run(drain)))
    assert pump.once() == 1                 # fewer than a chunk: the ring buffer is empty now
    assert await sink.next() == ["/a"]      # the clock never moved: the hour-long window was not waited for
    assert (counters["flush_drained"], counters["flush_age"], counters["flush_full"]) == (1, 0, 0)


async def test_with_the_window_setting_a_lone_event_waits_for_its_age(running) -> None:
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    batcher, pump = make(sink, clock, counters, FakeProbes([files("a")]), drained=False, max_delay=10.0)
    tasks.append(asyncio.create_task(batcher.run(drain)))
    assert pump.once() == 1
    await settle()
    assert sink.batches == []               # drained, but the window is the rule: held
    clock.now += 10.0
    assert await sink.next() == ["/a"]
    assert (counters["flush_age"], counters["flush_drained"]) == (1, 0)


async def test_under_load_full_chunks_gather_into_one_batch_until_a_pass_drains_the_buffer(running) -> None:
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    probes = FakeProbes([files("a", "b", "c"), files("d", "e", "f"), files("g")])
    batcher, pump = make(sink, clock, counters, probes, chunk=3)
    tasks.append(asyncio.create_task(batcher.run(drain)))
    assert pump.once() == 3                 # a full chunk: more may be waiting in the kernel
    await settle()
    assert pump.once() == 3
    await settle()
    assert sink.batches == []               # not cut per pass while the buffer keeps delivering
    assert pump.once() == 1                 # drained
    assert await sink.next() == ["/a", "/b", "/c", "/d", "/e", "/f", "/g"]
    assert counters["flush_drained"] == 1 and counters["batches"] == 1


async def test_a_drained_burst_bigger_than_a_batch_goes_out_in_full_batches(running) -> None:
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    batcher, pump = make(sink, clock, counters, FakeProbes([files(*"abcdefg")]), max_events=3)
    assert pump.once() == 7
    tasks.append(asyncio.create_task(batcher.run(drain)))
    while len(sink.batches) < 3:
        await sink.next()
    assert sink.batches == [["/a", "/b", "/c"], ["/d", "/e", "/f"], ["/g"]]
    assert (counters["flush_full"], counters["flush_drained"]) == (2, 1)


async def test_events_queued_after_the_buffer_was_drained_wait_for_the_next_drain(running) -> None:
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    probes = FakeProbes([files("a"), files("b", "c")])
    batcher, pump = make(sink, clock, counters, probes, chunk=2)
    tasks.append(asyncio.create_task(batcher.run(drain)))
    assert pump.once() == 1
    assert await sink.next() == ["/a"]
    assert pump.once() == 2                 # a full chunk again: not drained
    await settle()
    assert len(sink.batches) == 1
    assert pump.once() == 0                 # now it is
    assert await sink.next() == ["/b", "/c"]
    assert counters["flush_drained"] == 2


async def test_the_pump_run_loop_flushes_a_lone_record(running) -> None:
    """The same through ``Pump.run``: the record arrives between passes; the clock never moves."""
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    probes = FakeProbes([])
    batcher, pump = make(sink, clock, counters, probes, max_delay=3600.0)
    tasks.append(asyncio.create_task(batcher.run(drain)))
    stop = asyncio.Event()
    tasks.append(asyncio.create_task(pump.run(stop)))
    await settle()
    probes.chunks.append(files("a"))
    assert await sink.next() == ["/a"]
    stop.set()
    assert counters["flush_drained"] == 1


class WakingProbes(FakeProbes):
    """Chunks behind a pipe standing in for the ring buffer's fd: readable while a chunk waits."""

    def __init__(self) -> None:
        super().__init__([])
        self.read_end, self.write_end = os.pipe()
        self.takes = 0

    def put(self, chunk: tuple[bytes, list[int]]) -> None:
        self.chunks.append(chunk)
        os.write(self.write_end, b"x")

    def take(self, limit: int) -> tuple[bytes, list[int]]:
        self.takes += 1
        if self.chunks:
            os.read(self.read_end, 1)
        return super().take(limit)

    def wait_fd(self) -> int | None:
        return self.read_end

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


async def test_an_idle_pump_sleeps_on_the_fd_and_wakes_for_a_record(running) -> None:
    """No pass while nothing comes (the poll intervals are a millisecond: a polling pump would have
    made hundreds); a record makes the fd readable and goes out at once."""
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    probes = WakingProbes()
    try:
        batcher, pump = make(sink, clock, counters, probes, max_delay=3600.0)
        tasks.append(asyncio.create_task(batcher.run(drain)))
        stop = asyncio.Event()
        tasks.append(asyncio.create_task(pump.run(stop, interval=0.001, idle_interval=0.001)))
        await asyncio.sleep(0.2)
        assert probes.takes == 1  # the first pass found nothing; since then it sleeps in epoll
        probes.put(files("a"))
        assert await sink.next() == ["/a"]
        assert counters["pump_wakeups"] >= 1
        stop.set()
        await asyncio.wait_for(tasks.pop(), 30)
    finally:
        probes.close()


def test_settings_choose_the_flush_rule_and_the_poll_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = Counters()
    assert Batcher(Sink().publish, "s", "n1", counters).flush_when_drained is True
    monkeypatch.setenv("BULWARK_BATCH_FLUSH_WHEN_DRAINED", "false")
    monkeypatch.setenv("BULWARK_MONITOR_POLL_MS", "3")
    monkeypatch.setenv("BULWARK_MONITOR_IDLE_POLL_MS", "12")
    batcher = Batcher(Sink().publish, "s", "n1", counters)
    assert batcher.flush_when_drained is False
    pump = Pump(FakeProbes([]), RecordDecoder(CTX), batcher, counters)
    assert (pump.interval, pump.idle_interval) == (0.003, 0.012)
    assert Batcher(Sink().publish, "s", "n1", counters, flush_when_drained=True).flush_when_drained is True


async def test_a_busy_pump_waits_longer_and_a_quiet_one_comes_back_to_the_short_wait(
        monkeypatch: pytest.MonkeyPatch, running) -> None:
    """Passes of many records (but short of a chunk) wait the idle interval, gathering bigger passes;
    a pass of few records brings the short wait back. The waits are recorded, not slept."""
    drain, tasks = running
    sink, clock, counters = Sink(), Clock(), Counters()
    probes = FakeProbes([files(*(f"f{i}" for i in range(300))), files("a"), files(*(f"g{i}" for i in range(300)))])
    batcher, pump = make(sink, clock, counters, probes)
    tasks.append(asyncio.create_task(batcher.run(drain)))
    stop = asyncio.Event()
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 4:
            stop.set()
        await real_sleep(0)

    monkeypatch.setattr("services.monitor.pump.asyncio.sleep", recorded_sleep)
    await pump.run(stop)
    assert waits[:4] == [0.004, 0.002, 0.004, 0.004]   # busy, quiet, busy, then idle (nothing left)
    assert counters["records"] == 601
