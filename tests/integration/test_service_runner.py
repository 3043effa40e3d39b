"""The service runner (shared.service) against a real nats-server: the shutdown order is stop, hooks
(last registered first), tasks, drain, whatever the body did."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import Settings
from shared.nats.bus import connect
from shared.service import Service, running_service

SUBJECT = "t.runner.last"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The runner sets up the process's logging: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _settings(url: str) -> Settings:
    return Settings(nats_url=url, node_name="n1", heartbeat_seconds=0.05)


async def _last_words(svc: Service, order: list[tuple[Any, ...]]) -> None:
    """A task that, once stopped, publishes one last message (which only a drain guarantees is sent)."""
    await svc.stop.wait()
    order.append(("task", svc.nc.is_connected))
    await svc.nc.publish(SUBJECT, b"last")


async def test_hooks_then_tasks_then_drain_even_when_the_body_raises(nats_server) -> None:
    watcher = await connect(nats_server.url, "watcher")
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await heard.put(msg.data)

    await watcher.subscribe(SUBJECT, cb=on_msg)
    await watcher.flush()
    order: list[tuple[Any, ...]] = []
    try:
        with pytest.raises(RuntimeError, match="boom"):
            async with running_service("runner", _settings(nats_server.url)) as svc:
                task = svc.spawn(_last_words(svc, order), name="last-words")
                svc.heartbeat(lambda: {"n": 1})
                for name in ("first", "second"):
                    async def hook(name: str = name) -> None:
                        order.append(("hook", name, svc.stop.is_set(), task.done(), svc.nc.is_connected))
                    svc.on_stop(hook)
                raise RuntimeError("boom")
        assert order == [("hook", "second", True, False, True), ("hook", "first", True, False, True),
                         ("task", True)]
        assert task.done() and svc.tasks == []
        assert svc.nc.is_closed
        assert await asyncio.wait_for(heard.get(), timeout=10) == b"last"  # the drain flushed it
    finally:
        await watcher.close()


async def test_a_hook_orders_its_work_after_the_tasks_and_the_drain(nats_server) -> None:
    order: list[tuple[Any, ...]] = []
    async with running_service("runner", _settings(nats_server.url), connect=False) as svc:
        async def after_drain() -> None:  # registered first: runs last
            await svc.drain()
            order.append(("after drain", svc.nc.is_closed))

        async def between() -> None:
            await svc.finish_tasks()
            order.append(("after tasks", svc.nc.is_connected))

        svc.on_stop(after_drain)
        await svc.connect()  # work before connecting (a self-check, migrations) goes above
        svc.spawn(_last_words(svc, order))
        svc.on_stop(between)
        svc.stop.set()  # as SIGTERM does
        await svc.wait_stopped()
    assert order == [("task", True), ("after tasks", True), ("after drain", True)]


async def test_leaving_before_connecting_runs_the_hooks_and_drains_nothing(nats_server) -> None:
    ran: list[str] = []
    async with running_service("runner", _settings(nats_server.url), connect=False) as svc:
        async def release() -> None:
            await svc.drain()
            ran.append("release")

        svc.on_stop(release)  # e.g. the enforcer's kernel state, claimed before NATS
    assert ran == ["release"] and svc.stop.is_set()
    with pytest.raises(RuntimeError, match="not connected"):
        svc.nc  # noqa: B018


async def test_a_failing_hook_is_raised_after_the_rest_of_the_shutdown(nats_server) -> None:
    ran: list[str] = []
    with pytest.raises(ValueError, match="hook broke"):
        async with running_service("runner", _settings(nats_server.url), grace=0) as svc:
            async def fine() -> None:
                ran.append("fine")

            async def broken() -> None:
                raise ValueError("hook broke")

            stuck = svc.spawn(asyncio.Event().wait())  # ignores stop: cancelled after the grace
            svc.on_stop(fine)
            svc.on_stop(broken)
    assert ran == ["fine"] and stuck.cancelled() and svc.nc.is_closed


async def test_the_body_error_wins_over_a_hook_error(nats_server) -> None:
    with pytest.raises(RuntimeError, match="body broke"):
        async with running_service("runner", _settings(nats_server.url)) as svc:
            async def broken() -> None:
                raise ValueError("hook broke")

            svc.on_stop(broken)
            raise RuntimeError("body broke")
    assert svc.nc.is_closed
