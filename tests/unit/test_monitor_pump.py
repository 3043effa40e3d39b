"""The monitor's hot loop with fake probes: every record taken is accounted for exactly once."""
from __future__ import annotations

import asyncio
import struct

import pytest

from services.monitor.batcher import Batcher
from services.monitor.decode.exec_record import DecodeContext
from services.monitor.decode.records import RecordDecoder
from services.monitor.pump import Pump
from shared.lifecycle import Counters
from tests.unit.test_monitor_records import chunk_of, proc_rec, sys_rec

CTX = DecodeContext(node="n1", boot_id="b", boot_offset_ns=0)


class FakeProbes:
    """Hands out prepared chunks; counts like the kernel would."""

    def __init__(self, chunks: list[tuple[bytes, list[int]]]) -> None:
        self.chunks = chunks

    def take(self, limit: int) -> tuple[bytes, list[int]]:
        return self.chunks.pop(0) if self.chunks else (b"", [])

    def pending_bytes(self) -> int:
        return sum(len(c) for c, _ in self.chunks)

    def kernel_stats(self) -> dict[str, int]:
        return {"emitted_kernel": 7, "lost_kernel": 0}

    def wait_fd(self) -> int | None:
        return None  # polled


async def fake_publish(subject: str, payload: bytes, msg_id: str) -> None:
    return None


async def test_every_record_is_an_event_a_drop_a_process_record_or_an_error() -> None:
    recs = [proc_rec(100, ["bin", "sh"]), sys_rec(5, 257, name="/a"), b"\x63\0\0\0" + bytes(20),
            sys_rec(5, 257, name="/b"), sys_rec(5, 2, name="/c")]
    counters = Counters()
    batcher = Batcher(fake_publish, "s", "n1", counters, queue_size=2)
    decoder = RecordDecoder(CTX)
    pump = Pump(FakeProbes([chunk_of(*recs[:3]), chunk_of(*recs[3:]), chunk_of(sys_rec(5, 2, name="/d"))]),
                decoder, batcher, counters)
    stop = asyncio.Event()
    stop.set()                       # no passes on the timer: only the final emptying
    await pump.run(stop)
    assert counters["records"] == 6 and counters["emitted_kernel"] == 7
    assert (counters["events"], counters["lost_queue"], decoder.procs.records, counters["decode_errors"]) == (
        2, 2, 1, 1)
    assert counters["rb_pending_max_bytes"] > 0


def test_a_single_record_is_accounted_the_same_way() -> None:
    counters = Counters()
    pump = Pump(FakeProbes([]), RecordDecoder(CTX), Batcher(fake_publish, "s", "n1", counters), counters)
    pump.record(sys_rec(5, 257, name="/a"))
    pump.record(struct.pack("<IIQ", 99, 16, 0))
    assert (counters["records"], counters["events"], counters["decode_errors"]) == (2, 1, 1)


class CountingProbes(FakeProbes):
    """FakeProbes that count the passes."""

    def __init__(self, chunks: list[tuple[bytes, list[int]]]) -> None:
        super().__init__(chunks)
        self.takes = 0

    def take(self, limit: int) -> tuple[bytes, list[int]]:
        self.takes += 1
        return super().take(limit)


async def test_an_idle_pump_doubles_its_wait_and_the_first_record_brings_the_short_wait_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The waits the pump asks for, recorded instead of slept: no clock in the assertion."""
    counters = Counters()
    probes = CountingProbes([])
    pump = Pump(probes, RecordDecoder(CTX), Batcher(fake_publish, "s", "n1", counters), counters)
    stop = asyncio.Event()
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 6:          # five idle passes, then a record arrives
            probes.chunks.append(chunk_of(sys_rec(5, 257, name="/a")))
        if len(waits) == 8:
            stop.set()
        await real_sleep(0)

    monkeypatch.setattr("services.monitor.pump.asyncio.sleep", recorded_sleep)
    await pump.run(stop, interval=0.005, idle_interval=0.04)
    assert waits[:8] == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04, 0.005, 0.01]
    assert counters["records"] == 1 and probes.takes >= 8
