"""Bounded queue -> batches -> JetStream, with every kind of loss counted.

``offer``/``offer_many`` never block (the ring-buffer drain calls them): a full queue drops and counts
``lost_queue``. Events are RawEvents or, on the fast path, their wire maps already (the decoder builds
those); the queue holds wire maps only.
``run`` sends a batch when it holds ``max_events``, when its oldest event is ``max_delay`` old, or, with
``flush_when_drained`` (the default), as soon as the source said it has nothing more for now
(:meth:`source_drained`: the pump found the ring buffer empty): a lone event is not held for the
window, while under load the pump's passes and the time a publish takes still gather big batches. Each
send is counted by why it was cut: ``flush_full``, ``flush_drained``, ``flush_age`` or ``flush_stop``.
A failed publish is retried with the same message id (JetStream drops duplicates) for as long as the
service runs, backing off up to ``max_retry_delay``: meanwhile new events wait in the bounded queue (and,
once it is half full, in the kernel's ring buffer), so a slow or restarting NATS costs no event until
those bounds are reached. Only at shutdown is a batch given up after ``retries`` more attempts, and its
events counted as ``lost_publish``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from services.monitor.settings import load_monitor_settings
from shared.codec import pack
from shared.lifecycle import Counters
from shared.retry import retry_until_stopped
from shared.schemas.events import RawEvent

__all__ = ["Batcher", "Publish", "FLUSH_REASONS"]

log = logging.getLogger("bulwark.monitor.batcher")

# publish(subject, payload, message id): returns once the server acknowledged it
Publish = Callable[[str, bytes, str], Awaitable[None]]
FLUSH_REASONS = ("full", "drained", "age", "stop")  # why a batch was cut: counters flush_<reason>
_IDLE_WAIT = 0.05


class Batcher:
    """Collects events into RawBatch messages on one subject."""

    def __init__(self, publish: Publish, subject: str, node: str, counters: Counters, *,
                 max_events: int = 512, max_delay: float = 0.02, queue_size: int = 16384,
                 retries: int = 3, retry_delay: float = 0.1, max_retry_delay: float = 2.0,
                 msg_id_prefix: str = "", max_bytes: int = 900_000, flush_when_drained: bool | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        """``flush_when_drained`` None: ``BULWARK_BATCH_FLUSH_WHEN_DRAINED`` (default true). ``clock``:
        the batch age's time source (the event loop's by default)."""
        self.publish = publish
        self.subject = subject
        self.node = node
        self.counters = counters
        self.max_events = max(1, max_events)
        self.max_delay = max_delay
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._draining: asyncio.Event | None = None
        self.msg_id_prefix = msg_id_prefix or node
        self.max_bytes = max_bytes  # below NATS's default max_payload (1 MiB)
        self.queue_size = queue_size
        self.queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._seq = 0
        if flush_when_drained is None:
            flush_when_drained = load_monitor_settings().batch_flush_when_drained
        self.flush_when_drained = flush_when_drained
        self.clock = clock
        self._queued_total = 0    # events ever queued
        self._drained_at = 0      # _queued_total when the source last said it was drained
        for name in ("events", "batches", "lost_queue", "lost_publish", "publish_errors",
                     *(f"flush_{r}" for r in FLUSH_REASONS)):
            counters.setdefault(name, 0)

    def offer(self, event: RawEvent | dict[str, Any]) -> bool:
        """Queue an event without waiting; False (and counted) when the queue is full."""
        return self.offer_many([event if isinstance(event, dict) else event.to_wire()]) == 1

    def offer_many(self, events: list[dict[str, Any]]) -> int:
        """Queue wire maps without waiting; those beyond the queue's room are dropped and counted.
        Returns how many were queued."""
        room = self.queue_size - len(self.queue)
        if len(events) > room:
            self.counters["lost_queue"] += len(events) - max(room, 0)
            events = events[:max(room, 0)]
        if events:
            was = len(self.queue)
            self.queue += events
            self._queued_total += len(events)
            self.counters["events"] += len(events)
            if not was or len(self.queue) >= self.max_events:
                self._wake.set()
        return len(events)

    def source_drained(self) -> None:
        """The source has nothing more for now: what is queued goes out without waiting for the
        window (when ``flush_when_drained``; else nothing changes)."""
        if self.flush_when_drained and self._queued_total > self._drained_at:
            self._drained_at = self._queued_total
            self._wake.set()

    def queued(self) -> int:
        """Events waiting to be batched."""
        return len(self.queue)

    async def run(self, drain: asyncio.Event) -> None:
        """Batch and publish until ``drain`` is set and everything queued has been sent."""
        now = self.clock or asyncio.get_running_loop().time
        self._draining = drain
        pending: list[dict[str, Any]] = []
        first_at = 0.0
        taken = 0  # events ever moved from the queue into a batch
        while True:
            if self.queue and len(pending) < self.max_events:
                if not pending:
                    first_at = now()
                take = self.max_events - len(pending)
                more = self.queue[:take]
                del self.queue[:take]
                pending += more
                taken += len(more)
            reason = self._cut(pending, taken, drain.is_set(), now() - first_at)
            if reason is not None:
                self.counters.inc(f"flush_{reason}")
                await self._send(pending)
                pending = []
                continue
            if drain.is_set() and not pending and not self.queue:
                return
            # woken by new events or a drained source; at least every 50 ms to notice ``drain``
            timeout = min(self.max_delay - (now() - first_at), _IDLE_WAIT) if pending else _IDLE_WAIT
            self._wake.clear()
            if not self.queue:
                try:
                    await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))
                except TimeoutError:
                    pass

    def _cut(self, pending: list[dict[str, Any]], taken: int, draining: bool, age: float) -> str | None:
        """Why ``pending`` goes out now (one of FLUSH_REASONS), or None to keep gathering. Drained:
        its oldest event was queued before the source last said it was drained."""
        if not pending:
            return None
        if len(pending) >= self.max_events:
            return "full"
        if draining:
            return "stop"
        if taken - len(pending) < self._drained_at:
            return "drained"
        if age >= self.max_delay:
            return "age"
        return None

    async def _send(self, wire: list[dict[str, Any]]) -> None:
        payload = self._pack(wire, self._seq + 1)
        if len(payload) > self.max_bytes and len(wire) > 1:   # too big for one message: halves
            half = len(wire) // 2
            await self._send(wire[:half])
            await self._send(wire[half:])
            return
        self._seq += 1
        await self._publish(payload, len(wire))

    def _pack(self, wire: list[dict[str, Any]], seq: int) -> bytes:
        batch = {  # RawBatch's wire map, built directly (dataclasses.asdict would copy every event)
            "node": self.node, "seq": seq, "events": wire,
            "lost_kernel": self.counters.get("lost_kernel", 0) + self.counters.get("lost_kernel_proc", 0),
            "lost_queue": self.counters.get("lost_queue", 0),
        }
        return pack(batch)

    def _stopping(self) -> bool:
        return self._draining is not None and self._draining.is_set()

    async def _publish(self, payload: bytes, count: int) -> None:
        msg_id = f"{self.msg_id_prefix}:{self._seq}"
        sent = await retry_until_stopped(
            lambda: self.publish(self.subject, payload, msg_id), self._stopping, delay=self.retry_delay,
            max_delay=self.max_retry_delay, retries_at_stop=self.retries,
            on_error=lambda: self.counters.inc("publish_errors"), log=log, what="publish",
            extra=lambda: {"events": count, "queued": len(self.queue)})
        if sent:
            self.counters.inc("batches")
            return
        self.counters.inc("lost_publish", count)
        log.error("batch lost: still unpublished at shutdown", extra={"events": count, "seq": self._seq})
