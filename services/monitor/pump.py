"""The monitor's hot loop: ring buffer -> decoder -> batcher, a chunk of records at a time.

Each pass copies up to ``chunk`` committed records out of the ring buffer in one piece (their space
goes back to the kernel at once), decodes them in place and queues the events in bulk. Every record
taken is accounted for: an event queued (``events``), dropped on a full queue (``lost_queue``), a
process record (``proc_records``) or a ``decode_errors``. A pass that leaves the ring buffer empty
(it took less than a chunk) tells the batcher so (:meth:`Batcher.source_drained`), which then sends
what it holds instead of waiting for its window: the time from the kernel to NATS is at most one poll
interval plus a publish, and under load each pass still carries many records into one batch.

An idle pump does not poll: it sleeps in epoll on the ring buffer's fd (:meth:`RecordSource.wait_fd`),
which the kernel makes readable when a record comes to an empty buffer (the programs' adaptive wake-up).
A node with nothing to report costs no wake-ups, and a lone event is taken at once.
"""
from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Protocol

from services.monitor.batcher import Batcher
from services.monitor.decode.records import RecordDecoder
from services.monitor.ringbuf import Chunk
from services.monitor.settings import load_monitor_settings
from shared.errors import DecodeError
from shared.lifecycle import Counters

__all__ = ["Pump", "RecordSource", "tune_gc"]

log = logging.getLogger("bulwark.monitor.pump")

IDLE_STATS_SECONDS = 1.0  # an idle pump still refreshes the kernel's counters this often


def tune_gc(young: int = 50_000) -> None:
    """Fewer, cheaper garbage collections: everything alive now (compiled programs, modules) is set
    aside for good, and the young generation is collected every ``young`` allocations instead of 700
    (each event is a map holding a map: tracked, though never part of a cycle)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


class RecordSource(Protocol):
    """Where the pump takes records from (:class:`services.monitor.loader.Probes`; a fake in tests)."""

    def take(self, limit: int) -> Chunk: ...
    def pending_bytes(self) -> int: ...
    def kernel_stats(self) -> dict[str, int]: ...
    def wait_fd(self) -> int | None: ...


class Pump:
    """Moves records from the probes' ring buffer to the batcher, counting every one of them."""

    def __init__(self, probes: RecordSource, decoder: RecordDecoder, batcher: Batcher,
                 counters: Counters, *, chunk: int = 4096, interval: float | None = None,
                 idle_interval: float | None = None, busy_records: int = 256) -> None:
        """``interval``/``idle_interval`` (s) are :meth:`run`'s defaults; None: ``BULWARK_MONITOR_POLL_MS``
        and ``BULWARK_MONITOR_IDLE_POLL_MS``."""
        self.probes, self.decoder, self.batcher, self.counters = probes, decoder, batcher, counters
        self.chunk, self.busy_records = chunk, busy_records
        settings = load_monitor_settings()
        interval = settings.monitor_poll_ms / 1000 if interval is None else interval
        idle_interval = settings.monitor_idle_poll_ms / 1000 if idle_interval is None else idle_interval
        self.interval, self.idle_interval = interval, idle_interval
        self.wake_on_fd = settings.monitor_wake_on_fd
        for name in ("decode_errors", "records", "rb_pending_max_bytes", "pump_wakeups"):
            counters.setdefault(name, 0)

    def once(self) -> int:
        """One pass: take, decode, queue; the batcher hears when the pass left the buffer empty.
        Returns how many records were taken."""
        pending = self.probes.pending_bytes()
        self.counters["rb_pending_max_bytes"] = max(self.counters["rb_pending_max_bytes"], pending)
        chunk, offsets = self.probes.take(self.chunk)
        if not offsets:
            self.batcher.source_drained()
            return 0
        events, errors = self.decoder.feed_chunk(chunk, offsets)
        self.counters["records"] += len(offsets)
        if errors:
            self._count_errors(errors)
        if events:
            self.batcher.offer_many(events)
        if len(offsets) < self.chunk:
            self.batcher.source_drained()
        return len(offsets)

    def record(self, data: bytes) -> None:
        """One record handed up on its own (``Probes.drain``'s callback), accounted the same way."""
        self.counters["records"] += 1
        try:
            event = self.decoder.feed(data)
        except Exception as exc:  # a decoder bug must not lose the record silently either
            self._count_errors([exc if isinstance(exc, DecodeError) else DecodeError(repr(exc))])
            return
        if event is not None:
            self.batcher.offer_many([event])

    def _count_errors(self, errors: list[DecodeError]) -> None:
        self.counters["decode_errors"] += len(errors)
        log.warning("undecodable records", extra={"count": len(errors), "error": str(errors[0])})

    async def run(self, stop: asyncio.Event, interval: float | None = None,
                  hold: Callable[[], bool] = lambda: False, idle_interval: float | None = None) -> None:
        """Pump every ``interval`` s (at once while a full chunk came) until ``stop``, then empty the
        ring buffer; kernel counters are refreshed every 0.25 s. While ``hold()`` is true (the
        publisher is behind) records wait in the kernel's buffer. Passes that find nothing double
        the wait up to ``idle_interval``; the first record brings it back to ``interval``. A busy
        pass (``busy_records`` or more, short of a chunk) waits ``idle_interval`` too: under load
        fewer, bigger passes and batches (what the window gave), when few come the short wait (what a
        lone event's latency needs). Both default to the pump's own (settings). At 400k records/s,
        20 ms fill a sixth of 16 MiB."""
        interval = self.interval if interval is None else interval
        idle_interval = self.idle_interval if idle_interval is None else idle_interval
        loop = asyncio.get_running_loop()
        next_stats = loop.time()
        wait = interval
        fd = self.probes.wait_fd() if self.wake_on_fd else None
        while not stop.is_set():
            held = hold()
            taken = 0 if held else self.once()
            if loop.time() >= next_stats:
                self.counters.update(self.probes.kernel_stats())
                next_stats = loop.time() + 0.25
            if not taken and not held and fd is not None:  # idle: sleep until a record comes
                await _readable(fd, stop, IDLE_STATS_SECONDS)
                self.counters.inc("pump_wakeups")
                wait = interval
                continue
            if taken >= self.busy_records:   # many came: a longer wait gathers bigger passes and batches
                wait = max(idle_interval, interval)
            else:
                wait = interval if taken or held else min(wait * 2, max(idle_interval, interval))
            await asyncio.sleep(0 if taken >= self.chunk else wait)
        await self._empty(interval, hold)
        self.counters.update(self.probes.kernel_stats())

    async def _empty(self, interval: float, hold: Callable[[], bool], patience: float = 5.0) -> None:
        """Take what is left until the buffer is empty, waiting for the publisher; after ``patience`` s
        (the programs may still be producing) the first pass short of a chunk is the last."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + patience
        while True:
            late = loop.time() >= give_up
            if hold() and not late:
                await asyncio.sleep(interval)
                continue
            taken = self.once()
            if not taken or (late and taken < self.chunk):
                return
            await asyncio.sleep(0)


async def _readable(fd: int, stop: asyncio.Event, timeout: float) -> None:
    """Until ``fd`` is readable, ``stop`` is set or ``timeout`` s have passed."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((ready, stopped), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        stopped.cancel()
        ready.cancel()
