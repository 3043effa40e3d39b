"""A process's own resource use, as its heartbeat reports it: resident memory and CPU since the last look."""
from __future__ import annotations

import os
import time

__all__ = ["ResourceUse", "resident_bytes"]


def resident_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (``/proc/PID/statm``), in bytes; 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class ResourceUse:
    """CPU (all threads of this process) as a percentage of one CPU between two samples, and RSS."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def sample(self) -> dict[str, float | int]:
        """``{"cpu_percent", "rss_bytes"}`` since the previous sample (or since this object was made)."""
        wall, cpu = time.monotonic(), time.process_time()
        span = wall - self._wall
        percent = 100.0 * (cpu - self._cpu) / span if span > 0 else 0.0
        self._wall, self._cpu = wall, cpu
        return {"cpu_percent": round(percent, 2), "rss_bytes": resident_bytes()}
