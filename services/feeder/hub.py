"""In-process fan-out of new alerts to live subscribers (websocket and gRPC clients).

Each subscriber has its own bounded queue: a slow client loses alerts (counted per kind), it never
slows ingest or the other clients.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shared.lifecycle import Counters

__all__ = ["AlertHub", "Subscriber", "DEFAULT_QUEUE"]

DEFAULT_QUEUE = 1024


class Subscriber:
    """One live client: a bounded queue of alert maps."""

    def __init__(self, kind: str, maxsize: int) -> None:
        self.kind = kind
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0


class AlertHub:
    """Publish alerts to every subscriber without ever blocking."""

    def __init__(self, counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self._subs: set[Subscriber] = set()

    @contextmanager
    def subscribe(self, kind: str, maxsize: int = DEFAULT_QUEUE) -> Iterator[Subscriber]:
        """Register a subscriber for the duration of the ``with`` block."""
        sub = Subscriber(kind, maxsize)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, alert: dict[str, Any]) -> None:
        """Queue ``alert`` for every subscriber; a full queue drops it and counts ``dropped_<kind>``."""
        for sub in tuple(self._subs):
            try:
                sub.queue.put_nowait(alert)
            except asyncio.QueueFull:
                sub.dropped += 1
                self.counters.inc(f"dropped_{sub.kind}")

    def __len__(self) -> int:
        return len(self._subs)
