"""Load, attach and detach the exec programs; drain their ring buffer without blocking."""
from __future__ import annotations

import asyncio
import ctypes as ct
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ExecProbes", "DEFAULT_BPF_DIR", "read_boot_id", "drain_loop", "ATTACHMENTS"]

log = logging.getLogger("bulwark.monitor.loader")

DEFAULT_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
# (tracepoint, program) pairs; program names are what `bpftool prog show` lists (15 chars max)
ATTACHMENTS: tuple[tuple[str, str], ...] = (
    ("syscalls:sys_enter_execve", "bwmon_ex_enter"),
    ("syscalls:sys_enter_execveat", "bwmon_exat_ent"),
    ("syscalls:sys_exit_execve", "bwmon_ex_exit"),
    ("syscalls:sys_exit_execveat", "bwmon_exat_exit"),
    ("sched:sched_process_exec", "bwmon_sched_ex"),
)
_STAT_LOST, _STAT_NO_STASH, _STAT_STASH_FULL = 0, 1, 2


def read_boot_id() -> str:
    """This boot's random id (part of every event id)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


class ExecProbes:
    """The exec tracepoint programs of one monitor: ``open`` attaches, ``cleanup`` detaches all."""

    def __init__(self, bpf_dir: Path = DEFAULT_BPF_DIR) -> None:
        self.bpf_dir = bpf_dir
        self._bpf: Any = None

    def open(self, on_record: Callable[[bytes], None]) -> None:
        """Compile, attach every tracepoint and open the ring buffer (``on_record`` gets raw bytes)."""
        from bcc import BPF  # imported late: bcc reads BCC_KERNEL_SOURCE when it compiles

        self._bpf = BPF(src_file=str(self.bpf_dir / "process/exec.c").encode(),
                        cflags=[f"-I{self.bpf_dir / 'include'}"])
        try:
            for tp, fn in ATTACHMENTS:
                self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())

            def callback(_ctx: Any, data: Any, size: int) -> int:
                try:
                    on_record(ct.string_at(data, size))
                except Exception:  # never let one record break the drain
                    log.exception("ring buffer callback failed")
                return 0

            self._bpf[b"bw_events"].open_ring_buffer(callback)
        except Exception:
            self.cleanup()
            raise
        log.info("exec probes attached", extra={"programs": len(ATTACHMENTS)})

    def drain(self) -> None:
        """Hand every record waiting in the ring buffer to the callback; never waits."""
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()

    def _stat(self, index: int) -> int:
        if self._bpf is None:
            return 0
        return int(sum(self._bpf[b"bw_exec_stats"][ct.c_int(index)]))

    def lost_kernel(self) -> int:
        """Records the kernel could not put in the ring buffer (it was full), since start."""
        return self._stat(_STAT_LOST)

    def kernel_stats(self) -> dict[str, int]:
        """Every kernel-side counter: lost records, exits without an enter, stash failures."""
        return {"lost_kernel": self._stat(_STAT_LOST), "exit_without_enter": self._stat(_STAT_NO_STASH),
                "stash_failed": self._stat(_STAT_STASH_FULL)}

    def cleanup(self) -> None:
        """Detach every program and free the ring buffer; safe to call twice."""
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()
            log.info("exec probes detached")


async def drain_loop(probes: ExecProbes, stop: asyncio.Event, stats: dict[str, int],
                     interval: float = 0.005) -> None:
    """Drain the ring buffer every ``interval`` s until ``stop``, then once more; refresh kernel stats.

    The programs submit with BPF_RB_NO_WAKEUP (no epoll wake-ups, far cheaper for the traced
    process), so the buffer is consumed on a timer rather than polled.
    """
    ticks = 0
    while not stop.is_set():
        probes.drain()
        ticks += 1
        if ticks % 50 == 0:
            stats.update(probes.kernel_stats())
        await asyncio.sleep(interval)
    probes.drain()
    stats.update(probes.kernel_stats())
