"""User names for the uids events carry, as each mount namespace's own /etc/passwd says them.

A container's uid 1000 is whoever its image's passwd file names, not the host's user 1000. The table
of a mount namespace (with the cgroup: namespace ids are reused, cgroup ids are not) is read once
through ``/proc/<pid>/root/etc/passwd`` of a process in it (bounded: 256 KiB, 8192 entries), then
kept (LRU, ``limit`` tables). An unknown uid reloads the table at most every ``refresh`` seconds
(users added at run time); a table that cannot be read (its process already gone) is tried again on
a later event, not before ``retry`` seconds.
"""
from __future__ import annotations

import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable

from shared.procroot import open_in_pid_mntns

__all__ = ["UserNames", "parse_passwd"]

_MAX_BYTES = 256 * 1024
_MAX_ENTRIES = 8192


def parse_passwd(text: str) -> dict[int, str]:
    """uid -> name from passwd(5) lines; the first name of a uid wins, malformed lines are skipped."""
    table: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or not fields[0] or not fields[2].isdigit():
            continue
        table.setdefault(int(fields[2]), fields[0])
        if len(table) >= _MAX_ENTRIES:
            break
    return table


class UserNames:
    """((mntns, cgroup id), uid) -> user name."""

    def __init__(self, limit: int = 1024, refresh: float = 10.0, retry: float = 2.0, proc: str = "/proc",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.refresh, self.retry, self.proc = limit, refresh, retry, proc
        self._clock = clock
        # (mntns, cgroup id) -> (uid -> name, when loaded)
        self._tables: OrderedDict[tuple[int, int], tuple[dict[int, str], float]] = OrderedDict()
        self._failed: dict[tuple[int, int], float] = {}
        self.loads = 0

    def name(self, mntns: int, cgroup_id: int, uid: int, pids: tuple[int, ...]) -> str:
        """The name of ``uid`` in ``mntns``, read (when needed) through the first of ``pids`` (the
        process, its parent) that is still alive in that mount namespace; "" when unknown."""
        key = (mntns, cgroup_id)
        entry = self._tables.get(key)
        if entry is not None:
            found = entry[0].get(uid)
            if found is not None:
                return found
            if self._clock() - entry[1] < self.refresh:
                return ""
        elif self._clock() < self._failed.get(key, 0.0):
            return ""
        table = next((t for t in (self._load(pid, mntns) for pid in pids if pid > 0) if t is not None), None)
        if table is None:
            self._failed[key] = self._clock() + self.retry
            if len(self._failed) > self.limit:
                self._failed.clear()
            return entry[0].get(uid, "") if entry is not None else ""
        self._failed.pop(key, None)
        self._tables[key] = (table, self._clock())
        self._tables.move_to_end(key)
        if len(self._tables) > self.limit:
            self._tables.popitem(last=False)
        return table.get(uid, "")

    def _load(self, pid: int, mntns: int) -> dict[int, str] | None:
        """The passwd table process ``pid`` sees, when it still runs in ``mntns`` (its /proc directory,
        held open, pins the process: a reused pid fails instead of answering for another one). Never a
        FIFO or device put in its place (O_NONBLOCK, regular files only)."""
        fd = open_in_pid_mntns(self.proc, pid, mntns, "root/etc/passwd", os.O_RDONLY | os.O_NONBLOCK)
        if fd is None:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {}
            data = os.read(fd, _MAX_BYTES)
        except OSError:
            return None
        finally:
            os.close(fd)
        self.loads += 1
        return parse_passwd(data.decode("utf-8", "replace"))
