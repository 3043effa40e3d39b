"""Bounded queue -> batches -> JetStream, with every kind of loss counted.

``offer`` never blocks (the ring-buffer drain calls it): a full queue drops and counts ``lost_queue``.
``run`` sends a batch when it holds ``max_events`` or its oldest event is ``max_delay`` old, retries a
failed publish a bounded number of times (same message id, so JetStream drops duplicates), then
counts the batch's events as ``lost_publish``.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.codec import pack
from shared.lifecycle import Counters
from shared.schemas.events import RawBatch, RawEvent

__all__ = ["Batcher", "Publish"]

log = logging.getLogger("bulwark.monitor.batcher")

# publish(subject, payload, message id): returns once the server acknowledged it
Publish = Callable[[str, bytes, str], Awaitable[None]]


class Batcher:
    """Collects events into RawBatch messages on one subject."""

    def __init__(self, publish: Publish, subject: str, node: str, counters: Counters, *,
                 max_events: int = 512, max_delay: float = 0.02, queue_size: int = 16384,
                 retries: int = 3, retry_delay: float = 0.1, msg_id_prefix: str = "") -> None:
        self.publish = publish
        self.subject = subject
        self.node = node
        self.counters = counters
        self.max_events = max(1, max_events)
        self.max_delay = max_delay
        self.retries = retries
        self.retry_delay = retry_delay
        self.msg_id_prefix = msg_id_prefix or node
        self.queue: asyncio.Queue[RawEvent] = asyncio.Queue(maxsize=queue_size)
        self._wake = asyncio.Event()
        self._seq = 0
        for name in ("events", "batches", "lost_queue", "lost_publish", "publish_errors"):
            counters.setdefault(name, 0)

    def offer(self, event: RawEvent) -> bool:
        """Queue an event without waiting; False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.counters.inc("lost_queue")
            return False
        self.counters.inc("events")
        self._wake.set()
        return True

    async def run(self, drain: asyncio.Event) -> None:
        """Batch and publish until ``drain`` is set and everything queued has been sent."""
        loop = asyncio.get_running_loop()
        pending: list[RawEvent] = []
        first_at = 0.0
        while True:
            while len(pending) < self.max_events and not self.queue.empty():
                if not pending:
                    first_at = loop.time()
                pending.append(self.queue.get_nowait())
            draining = drain.is_set()
            if pending and (len(pending) >= self.max_events or draining
                            or loop.time() - first_at >= self.max_delay):
                await self._send(pending)
                pending = []
                continue
            if draining and not pending and self.queue.empty():
                return
            timeout = self.max_delay - (loop.time() - first_at) if pending else 0.05
            self._wake.clear()
            if self.queue.empty():
                try:
                    await asyncio.wait_for(self._wake.wait(), max(timeout, 0.001))
                except asyncio.TimeoutError:
                    pass

    async def _send(self, events: list[RawEvent]) -> None:
        self._seq += 1
        batch = RawBatch(node=self.node, seq=self._seq, events=[e.to_wire() for e in events],
                         lost_kernel=self.counters.get("lost_kernel", 0),
                         lost_queue=self.counters.get("lost_queue", 0))
        payload = pack(batch.to_wire())
        msg_id = f"{self.msg_id_prefix}:{self._seq}"
        for attempt in range(self.retries + 1):
            try:
                await self.publish(self.subject, payload, msg_id)
                self.counters.inc("batches")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters.inc("publish_errors")
                log.warning("publish failed", extra={"attempt": attempt + 1, "error": repr(exc),
                                                     "events": len(events)})
                if attempt < self.retries:
                    await asyncio.sleep(self.retry_delay * (2 ** attempt))
        self.counters.inc("lost_publish", len(events))
        log.error("batch lost after retries", extra={"events": len(events), "seq": self._seq})
