"""Retention: a periodic task trimming alerts and logs by age and by count (settings; 0 = no limit)."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.feeder.store.database import RecordStore
from services.feeder.store.models import AlertRow, LogRow
from shared.lifecycle import Counters

__all__ = ["RetentionPolicy", "trim_once", "retention_loop"]

log = logging.getLogger("bulwark.feeder.retention")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long and how many of each kind are kept (0 = unlimited)."""

    alerts_max_age_seconds: float = 0.0
    alerts_max_rows: int = 0
    logs_max_age_seconds: float = 0.0
    logs_max_rows: int = 0


def trim_once(store: RecordStore, policy: RetentionPolicy, now_ns: int | None = None) -> dict[str, int]:
    """Apply ``policy`` once; returns how many alerts and logs were deleted."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    out = {}
    for name, table, age, rows in (("alerts", AlertRow, policy.alerts_max_age_seconds, policy.alerts_max_rows),
                                   ("logs", LogRow, policy.logs_max_age_seconds, policy.logs_max_rows)):
        out[name] = store.trim(table, older_than_ns=now_ns - int(age * 1e9) if age > 0 else None,
                               keep_rows=rows if rows > 0 else None)
    return out


async def retention_loop(store: RecordStore, policy: RetentionPolicy, interval: float, counters: Counters,
                         stop: asyncio.Event) -> None:
    """Trim every ``interval`` seconds until ``stop``; deletions counted (``trimmed_alerts``/``trimmed_logs``)."""
    while not stop.is_set():
        try:
            deleted = await asyncio.to_thread(trim_once, store, policy)
            for name, n in deleted.items():
                counters.inc(f"trimmed_{name}", n)
            if any(deleted.values()):
                log.info("retention trimmed", extra=deleted)
        except Exception:
            counters.inc("retention_errors")
            log.exception("retention failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
