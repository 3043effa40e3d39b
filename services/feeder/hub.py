"""In-process fan-out of new records (alerts, logs) to live subscribers (websocket and gRPC clients).

Each subscriber has its own bounded queue and its own filter: a slow client loses records (counted as
``dropped_<transport>``), it never slows ingest or the other clients. What a client lost is told to it:
its queue yields ``("dropped", {"count": n})`` at the point of the gap, as soon as it has room again (or
when it has drained its queue), and the client turns that into a SystemEvent message.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shared.lifecycle import Counters

__all__ = ["AlertHub", "Subscriber", "DEFAULT_QUEUE", "Item"]

DEFAULT_QUEUE = 1024
Item = tuple[str, dict[str, Any]]  # ("alert" | "log" | "dropped", payload)


class Subscriber:
    """One live client: a bounded queue of (kind, record) and the filter deciding what it gets."""

    def __init__(self, transport: str, maxsize: int, kinds: frozenset[str] = frozenset({"alert"}),
                 accept: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.kind = self.transport = transport
        self.kinds, self.accept = kinds, accept
        self.maxsize = max(1, maxsize)
        self.queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=self.maxsize)
        self.dropped = 0  # over the subscriber's life
        self.untold = 0  # dropped and not yet told to the client

    def wants(self, kind: str, record: dict[str, Any]) -> bool:
        """Whether this subscriber asked for ``record``."""
        return kind in self.kinds and (self.accept is None or self.accept(record))

    def offer(self, item: Item) -> bool:
        """Queue ``item`` (after the notice of an earlier gap, if any); False when it had to be dropped."""
        if self.untold:
            if self.queue.qsize() > self.maxsize - 2:
                self.untold += 1
                self.dropped += 1
                return False
            self.queue.put_nowait(("dropped", {"count": self.untold}))
            self.untold = 0
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            self.untold += 1
            self.dropped += 1
            return False

    async def get(self) -> Item:
        """The next item; the notice of a gap once the queue is drained."""
        if self.queue.empty() and self.untold:
            count, self.untold = self.untold, 0
            return ("dropped", {"count": count})
        return await self.queue.get()


class AlertHub:
    """Publish records to every interested subscriber without ever blocking."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self._subs: set[Subscriber] = set()

    @contextmanager
    def subscribe(self, transport: str, maxsize: int = DEFAULT_QUEUE, *, kinds: frozenset[str] = frozenset({"alert"}),
                  accept: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[Subscriber]:
        """Register a subscriber for the duration of the ``with`` block."""
        sub = Subscriber(transport, maxsize, kinds, accept)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, record: dict[str, Any], kind: str = "alert") -> None:
        """Offer ``record`` to every subscriber that wants it; a full queue drops and counts."""
        for sub in tuple(self._subs):
            if sub.wants(kind, record) and not sub.offer((kind, record)):
                self.counters.inc(f"dropped_{sub.transport}")

    def __len__(self) -> int:
        return len(self._subs)
