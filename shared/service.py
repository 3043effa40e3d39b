"""One way to run a service: settings, logging, the NATS connection, streams, heartbeat, tasks and drain.

Every service's main is ``async with running_service(name, settings) as svc:`` around its own wiring:
the context sets up logging and SIGINT/SIGTERM, connects (with the service's NATS credentials) and
makes sure the streams exist; inside, the main starts its subscriptions and loops with
:meth:`Service.spawn` and its heartbeat with :meth:`Service.heartbeat`, then waits for
:meth:`Service.wait_stopped`. A main with work that must come before the connection (a kernel
self-check, claiming the kernel, database migrations) passes ``connect=False`` and calls
:meth:`Service.connect` itself.

On the way out, whatever happened: the stop event is set; the hooks given to :meth:`Service.on_stop`
run, last registered first; every spawned task is awaited (one still running after ``grace`` seconds
is cancelled); the connection is drained, so no service leaves NATS without flushing what it
published. A hook that must come after the tasks or after the drain says so by awaiting
:meth:`Service.finish_tasks` or :meth:`Service.drain` itself (each does its work once). A failing hook
is logged and the shutdown goes on; its error is raised at the end unless the body's already is.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from shared.lifecycle import Counters, heartbeat_loop, stop_event_on_signals
from shared.logs import setup_logging
from shared.nats.bus import connect, ensure_streams
from shared.nats.creds import credentials_for

__all__ = ["Service", "StopHook", "running_service"]

log = logging.getLogger("bulwark.service")

StopHook = Callable[[], Awaitable[Any]]


@dataclass
class Service:
    """A running service's shared parts: its connection, stop event, counters, tasks and stop hooks."""

    name: str
    settings: Any
    stop: asyncio.Event
    client: str = ""  # the connection's name (NATS shows it); default: ``name``
    streams: bool = True
    grace: float | None = 10.0
    drain_timeout: float | None = None
    counters: Counters = field(default_factory=Counters)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    hooks: list[StopHook] = field(default_factory=list)
    _nc: Client | None = None
    _js: JetStreamContext | None = None
    _drained: bool = False

    @property
    def nc(self) -> Client:
        """The NATS connection (after :meth:`connect`)."""
        if self._nc is None:
            raise RuntimeError(f"{self.name}: not connected to NATS yet")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """JetStream on the connection."""
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    async def connect(self) -> None:
        """Connect as the service's own NATS user and (``streams``) make sure the streams exist."""
        if self._nc is not None:
            return
        self._nc = await connect(self.settings.nats_url, self.client or self.name,
                                 credentials=credentials_for(self.settings, self.name))
        if self.streams:
            await ensure_streams(self.js)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` until the service stops; it is awaited (or cancelled) on the way out."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def heartbeat(self, details: Callable[[], dict[str, Any]], wake: asyncio.Event | None = None) -> None:
        """Publish this service's health with ``details()`` every ``heartbeat_seconds`` (and at once
        whenever ``wake`` is set)."""
        self.spawn(heartbeat_loop(self.nc, self.name, self.settings.node_name, self.settings.heartbeat_seconds,
                                  details, self.stop, wake), name="heartbeat")

    def on_stop(self, hook: StopHook) -> None:
        """Run ``hook`` first on the way out (after ``stop`` is set, before tasks and drain; last
        registered, first run)."""
        self.hooks.append(hook)

    async def wait_stopped(self) -> None:
        """Until SIGINT or SIGTERM (or someone sets ``stop``)."""
        await self.stop.wait()

    async def finish_tasks(self) -> None:
        """Set ``stop`` and await every spawned task (cancelling those still running after ``grace`` s)."""
        self.stop.set()
        while self.tasks:
            tasks, self.tasks[:] = list(self.tasks), []
            await _finish(tasks, self.grace)

    async def drain(self) -> None:
        """Drain the connection once (within ``drain_timeout`` s, else close it); nothing if never connected."""
        if self._nc is None or self._drained:
            return
        self._drained = True
        try:
            await asyncio.wait_for(self._nc.drain(), timeout=self.drain_timeout)
        except Exception as exc:  # timed out, or the connection is gone: close hard
            log.warning("nats drain failed", extra={"service_name": self.name, "error": repr(exc)})
            await self._nc.close()


async def _finish(tasks: list[asyncio.Task[Any]], grace: float | None) -> None:
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


async def _shut_down(svc: Service) -> BaseException | None:
    """Stop, hooks (last first), tasks, drain; returns the first hook's error, if any."""
    svc.stop.set()
    failure: BaseException | None = None
    while svc.hooks:
        hook = svc.hooks.pop()
        try:
            await hook()
        except Exception as exc:  # the rest of the shutdown must still happen
            log.exception("stop hook failed", extra={"service_name": svc.name})
            failure = failure or exc
    await svc.finish_tasks()
    await svc.drain()
    return failure


@asynccontextmanager
async def running_service(name: str, settings: Any, *, client: str = "", connect: bool = True,
                          streams: bool = True, grace: float | None = 10.0,
                          drain_timeout: float | None = None) -> AsyncIterator[Service]:
    """Logging, signals, (``connect``) a NATS connection named ``client`` as the service's own user and
    (``streams``) the streams; stop, hooks, tasks and drain in ``finally``."""
    setup_logging(name, settings.log_level)
    svc = Service(name, settings, stop_event_on_signals(), client=client, streams=streams, grace=grace,
                  drain_timeout=drain_timeout)
    body_failed = False
    try:
        if connect:
            await svc.connect()
        yield svc
    except BaseException:
        body_failed = True
        raise
    finally:
        failure = await _shut_down(svc)
        if failure is not None and not body_failed:
            raise failure
