"""One way to run a service: settings, logging, the NATS connection, streams, heartbeat, tasks and drain.

Every service's main is ``async with running_service(name, settings) as svc:`` around its own wiring:
the context connects (with the service's NATS credentials) and makes sure the streams exist; inside,
the main starts its subscriptions and loops with :meth:`Service.spawn` and its heartbeat with
:meth:`Service.heartbeat`, then waits for :meth:`Service.wait_stopped` (SIGINT/SIGTERM). On the way out,
whatever happened, the stop event is set, every spawned task is awaited (a task that does not end
within ``grace`` seconds is cancelled), and the connection is drained: no service leaves NATS without
flushing what it published.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from shared.lifecycle import Counters, heartbeat_loop, stop_event_on_signals
from shared.logs import setup_logging
from shared.nats.bus import connect, ensure_streams
from shared.nats.creds import credentials_for

__all__ = ["Service", "running_service"]

log = logging.getLogger("bulwark.service")


@dataclass
class Service:
    """A running service's shared parts: its connection, stop event, counters and tasks."""

    name: str
    settings: Any
    nc: Client
    js: JetStreamContext
    stop: asyncio.Event
    counters: Counters = field(default_factory=Counters)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` until the service stops; it is awaited (or cancelled) on the way out."""
        task = asyncio.create_task(coro)
        self.tasks.append(task)
        return task

    def heartbeat(self, details: Callable[[], dict[str, Any]]) -> None:
        """Publish this service's health with ``details()`` every ``heartbeat_seconds``."""
        self.spawn(heartbeat_loop(self.nc, self.name, self.settings.node_name, self.settings.heartbeat_seconds,
                                  details, self.stop))

    async def wait_stopped(self) -> None:
        """Until SIGINT or SIGTERM (or someone sets ``stop``)."""
        await self.stop.wait()


async def _finish(tasks: list[asyncio.Task[Any]], grace: float) -> None:
    """Await every task; cancel those still running after ``grace`` seconds; log any that failed."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error("service task failed", extra={"task": task.get_name(), "error": repr(result)})
    if pending:
        log.warning("service tasks cancelled at stop", extra={"count": len(pending)})


@asynccontextmanager
async def running_service(name: str, settings: Any, *, streams: bool = True,
                          grace: float = 10.0) -> AsyncIterator[Service]:
    """Logging, signals, a NATS connection as the service's own user and (``streams``) the streams;
    stop, tasks and drain in ``finally``."""
    setup_logging(name, settings.log_level)
    stop = stop_event_on_signals()
    nc = await connect(settings.nats_url, name, credentials=credentials_for(settings, name))
    svc = Service(name, settings, nc, nc.jetstream(), stop)
    try:
        if streams:
            await ensure_streams(svc.js)
        yield svc
    finally:
        stop.set()
        await _finish(svc.tasks, grace)
        try:
            await nc.drain()
        except Exception as exc:  # a connection already closed has nothing left to flush
            log.warning("drain failed", extra={"service_name": name, "error": repr(exc)})
