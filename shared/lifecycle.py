"""Running a service: signals -> stop event -> drain, plus the heartbeat every service sends."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client

from shared.codec import pack
from shared.nats.subjects import health
from shared.resources import ResourceUse

__all__ = ["stop_event_on_signals", "heartbeat_loop", "sleep_until", "run_service", "Counters"]

log = logging.getLogger("bulwark.lifecycle")


class Counters(dict[str, int]):
    """Named counters a service reports in its heartbeat (drops, decode errors, events...)."""

    def inc(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``."""
        self[name] = self.get(name, 0) + by


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def heartbeat_loop(nc: Client, service: str, node: str, interval: float,
                         details: Callable[[], dict[str, Any]], stop: asyncio.Event,
                         wake: asyncio.Event | None = None) -> None:
    """Publish ``{service, node, status, details}`` on the health subject until ``stop`` is set; the
    details always carry the process's ``cpu_percent`` (since the last beat) and ``rss_bytes``.
    Setting ``wake`` sends the next beat at once (news its readers should not wait ``interval`` for)."""
    subject = health(service, node)
    use = ResourceUse()
    while not stop.is_set():
        try:
            info = {**details(), **use.sample()}
            await nc.publish(subject, pack({"service": service, "node": node, "ts_ns": time.time_ns(),
                                            "status": info.pop("status", "ok"), "details": info}))
        except Exception:
            log.exception("heartbeat failed", extra={"service_name": service})
        await sleep_until(interval, stop, wake)


async def sleep_until(interval: float, stop: asyncio.Event, wake: asyncio.Event | None) -> None:
    """Wait ``interval`` s, less when ``stop`` or ``wake`` is set (``wake`` is cleared)."""
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
    if wake is not None:
        wake.clear()


def run_service(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's async main until it returns."""
    asyncio.run(main())
