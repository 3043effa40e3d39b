"""Publishing the enforcers' kill reports as ``enforce`` raw events on ``raw_events(node)``.

Same wire as the monitor (a msgpack RawBatch per NATS message, JetStream de-duplication by message
id); kills are rare, so each drain tick sends one batch. A failed publish is retried (same id) for as
long as the service runs, the enforcers' bounded report queues holding what comes meanwhile; only at
shutdown is a batch given up after a few more attempts, its events counted as ``kills_lost``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.enforcer.reports.kernel import to_raw_event
from shared.codec import pack
from shared.lifecycle import Counters
from shared.nats.subjects import raw_events
from shared.retry import retry_until_stopped
from shared.schemas.events import RawBatch, RawEvent

__all__ = ["report_loop", "Publish"]

log = logging.getLogger("bulwark.enforcer.reports")

Publish = Callable[[str, bytes, str], Awaitable[None]]  # subject, payload, message id


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _raw_event(record: Any, node: str, offset: int, boot_id: str) -> RawEvent:
    """A report as a raw event: reports that know their own form say it (AppArmor's, BPF-LSM's);
    the signal enforcer's kill records go through its decoder."""
    if hasattr(record, "to_raw_event"):
        event: RawEvent = record.to_raw_event(node, offset, boot_id)
        return event
    return to_raw_event(record, node, offset, boot_id)


async def _send(publish: Publish, subject: str, payload: bytes, msg_id: str, n: int, counters: Counters,
                stop: asyncio.Event, delay: float, max_delay: float, retries_at_stop: int = 3) -> None:
    sent = await retry_until_stopped(lambda: publish(subject, payload, msg_id), stop.is_set, delay=delay,
                                     max_delay=max_delay, retries_at_stop=retries_at_stop,
                                     on_error=lambda: counters.inc("report_publish_errors"), log=log,
                                     what="kill report publish", extra=lambda: {"events": n})
    if sent:
        counters.inc("kills_published", n)
        return
    counters.inc("kills_lost", n)
    log.error("kill reports lost", extra={"events": n})


async def report_loop(take: Callable[[], list], publish: Publish, node: str, stop: asyncio.Event,
                      counters: Counters, interval: float = 0.05, retry_delay: float = 0.1,
                      retry_max_delay: float = 2.0, idle_interval: float = 0.25) -> None:
    """Every ``interval`` s, publish what ``take()`` returns; once more after ``stop``. A failed publish
    is retried, backing off from ``retry_delay`` to ``retry_max_delay`` s. A second after the last
    report the ticks slow to ``idle_interval`` (an idle enforcer's main cost was this loop)."""
    for name in ("kills_published", "kills_lost", "report_publish_errors"):
        counters.setdefault(name, 0)
    boot_id = _boot_id()
    offset = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC
    prefix = f"{node}:enforcer:{boot_id}:{time.time_ns()}"
    subject = raw_events(node)
    seq = 0
    loop = asyncio.get_running_loop()
    last_report = loop.time()
    while True:
        records = take()
        if records:
            last_report = loop.time()
            seq += 1
            events = [_raw_event(r, node, offset, boot_id).to_wire() for r in records]
            payload = pack(RawBatch(node=node, seq=seq, events=events).to_wire())
            await _send(publish, subject, payload, f"{prefix}:{seq}", len(events), counters, stop,
                        retry_delay, retry_max_delay)
        if stop.is_set():
            return
        await asyncio.sleep(interval if loop.time() - last_report < 1.0 else max(interval, idle_interval))
