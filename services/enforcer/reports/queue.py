"""The report path every inline enforcer shares: a bounded queue the service drains with
``take_reports()``, and for the BPF enforcers the thread that polls their ring buffer into it.

Nothing is dropped silently: a full queue refuses the newest report and counts it in ``reports_lost``,
as the programs count the reports the ring buffer had no room for (``bw_enf_stats[1]``).
"""
from __future__ import annotations

import ctypes as ct
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from shared.lifecycle import Counters

__all__ = ["ReportQueue", "RingBufferDrain", "kernel_reports_lost", "record_handler", "MAX_REPORTS"]

log = logging.getLogger("bulwark.enforcer.reporting")

MAX_REPORTS = 4096
R = TypeVar("R")


class ReportQueue(Generic[R]):
    """Reports waiting to be published, oldest first; bounded, overflow counted in ``reports_lost``."""

    def __init__(self, counters: Counters, limit: int = MAX_REPORTS) -> None:
        self.counters, self.limit = counters, limit
        self._items: deque[R] = deque()
        counters.setdefault("reports_lost", 0)

    def put(self, report: R) -> bool:
        """Queue ``report``; False (and counted) when the queue is full."""
        if len(self._items) >= self.limit:
            self.counters.inc("reports_lost")
            return False
        self._items.append(report)
        return True

    def take(self) -> list[R]:
        """Everything queued since the last call (thread-safe against ``put``)."""
        out: list[R] = []
        while self._items:
            out.append(self._items.popleft())
        return out

    def __len__(self) -> int:
        return len(self._items)


class RingBufferDrain:
    """A daemon thread polling a bcc ring buffer (its callback was given to ``open_ring_buffer``) until
    stopped or the program set is gone."""

    def __init__(self, name: str, bpf: Callable[[], Any], counters: Counters) -> None:
        self.name, self._bpf, self.counters = name, bpf, counters
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling (once; later calls do nothing while it runs)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and wait for the thread (at most ``timeout`` s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            bpf = self._bpf()
            if bpf is None:
                break
            try:
                bpf.ring_buffer_poll(100)
            except Exception as exc:
                self.counters.inc("errors")
                log.error("ring buffer poll failed", extra={"drain": self.name, "error": repr(exc)})
                self._stop.wait(0.1)


def kernel_reports_lost(bpf: Any) -> int:
    """Reports the programs had no ring-buffer room for (``bw_enf_stats[1]``, summed over CPUs); 0 when
    nothing is loaded."""
    if bpf is None:
        return 0
    try:
        return int(sum(bpf[b"bw_enf_stats"][ct.c_int(1)]))
    except Exception:
        return 0


def record_handler(parse: Callable[[bytes], R], queue: ReportQueue[R], counters: Counters,
                   counted: Callable[[R], str], what: str, logger: logging.Logger) -> Callable[[Any, Any, int], int]:
    """A bcc ring-buffer callback: parse each record into ``queue``, count it under ``counted(record)``;
    an undecodable record is counted (``report_errors``) and never stops the drain."""

    def on_record(_ctx: Any, data: Any, size: int) -> int:
        try:
            rec = parse(ct.string_at(data, size))
        except Exception as exc:
            counters.inc("report_errors")
            logger.warning(f"undecodable {what}", extra={"error": repr(exc)})
            return 0
        if queue.put(rec):
            counters.inc(counted(rec))
        return 0

    return on_record
