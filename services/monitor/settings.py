"""The monitor's own settings: everything in :class:`shared.config.Settings` plus how the hot loop
polls the ring buffer and when the batcher cuts a batch, all from ``BULWARK_*`` environment variables.

``BULWARK_BATCH_FLUSH_WHEN_DRAINED`` (default true): a batch is sent as soon as the pump finds the
ring buffer empty, besides when it is full (``BULWARK_BATCH_MAX_EVENTS``) or its oldest event is
``BULWARK_BATCH_MAX_DELAY_MS`` old; false restores the fixed window (the benchmarks compare both).
``BULWARK_MONITOR_WAKE_ON_FD`` (default true): an idle pump sleeps in epoll on the ring buffer's fd
and the kernel wakes it when a record comes (false: it polls, backing off to the idle wait below).
``BULWARK_MONITOR_POLL_MS`` (2) is the pump's wait between passes while a few records come;
``BULWARK_MONITOR_IDLE_POLL_MS`` (4) the longest wait an idle pump backs off to, and its wait after a
busy pass (256 records or more): the longest a lone event waits in the kernel's buffer. The window
the monitor had before polled every 5 ms backing off to 20 (0.6% of a core for an idle loop here;
4 ms costs 1.9%).
"""
from __future__ import annotations

from pydantic import Field

from shared.config import Settings

__all__ = ["MonitorSettings", "load_monitor_settings"]


class MonitorSettings(Settings):
    """Settings of ``python -m services.monitor``."""

    batch_flush_when_drained: bool = True
    monitor_wake_on_fd: bool = True
    monitor_poll_ms: float = Field(default=2.0, gt=0, le=1000)
    monitor_idle_poll_ms: float = Field(default=4.0, gt=0, le=1000)


def load_monitor_settings(**overrides: object) -> MonitorSettings:
    """Monitor settings from the environment, explicit overrides winning."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return MonitorSettings(**clean)  # type: ignore[arg-type]
