"""The owner of an exec'd program, as the workload's mount namespace sees the file (ownerOnly rules).

The kernel's exec record carries no owner, and its exit could not give the right one: for a script the
new image's file is the interpreter, not the program asked for. So the file is looked up here, by the
path the exec asked for, inside the workload's root (``/proc/<pid>/root``, symlinks resolved inside it
as the exec resolved them) and its owner read, the way KubeArmor judges ownerOnly by the file's owner.
The root is taken from the exec'ing process, its parent, the last process that answered for that
namespace, or else any process found in it by a scan of /proc (at most one scan per namespace every
``retry`` seconds while none is found), each pinned by its /proc directory and checked to still be in
the namespace (a reused pid answers for no other one); the monitor's own namespace uses its own root.
-1 when the path does not resolve there, or when no process of the namespace is left by the time the
record is read (a namespace whose every process already ended: then an ownerOnly rule sees no owner).
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

from shared.procroot import open_beneath, open_in_pid_mntns

__all__ = ["FileOwners"]

_GONE = -2  # this pid cannot answer (gone, or in another namespace): try the next one


class FileOwners:
    """(mntns, absolute path) -> the file's owner uid (host view, as event uids are), or -1."""

    def __init__(self, proc: str = "/proc", limit: int = 4096, retry: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.proc, self.limit, self.retry, self._clock = proc, limit, retry, clock
        self._last: OrderedDict[int, int] = OrderedDict()  # mntns -> a pid that answered for it
        self._no_scan_until: dict[int, float] = {}  # mntns -> when a scan may look for it again
        try:
            self._own_mntns = os.stat(f"{proc}/self/ns/mnt").st_ino
        except OSError:
            self._own_mntns = -1
        self.lookups = 0
        self.unknown = 0
        self.scans = 0

    def owner(self, mntns: int, path: str, pids: tuple[int, ...]) -> int:
        """The owner of ``path`` in ``mntns``, looked up through the first of ``pids`` (then the last
        process that answered for ``mntns``) still in that namespace; -1 when unknown."""
        if not path.startswith("/"):
            return -1
        self.lookups += 1
        if mntns == self._own_mntns:
            return self._counted(_owner_beneath("/", path))
        tried: set[int] = set()
        for pid in (*pids, self._last.get(mntns, 0)):
            if pid <= 0 or pid in tried:
                continue
            tried.add(pid)
            uid = self._through(pid, mntns, path)
            if uid != _GONE:
                return self._counted(self._answered(mntns, pid, uid))
        self._last.pop(mntns, None)
        pid = self._scan(mntns)
        uid = self._through(pid, mntns, path) if pid else _GONE
        return self._counted(self._answered(mntns, pid, uid) if uid != _GONE else -1)

    def _answered(self, mntns: int, pid: int, uid: int) -> int:
        """Remember ``pid`` as one that answers for ``mntns``; returns ``uid``."""
        self._last[mntns] = pid
        self._last.move_to_end(mntns)
        if len(self._last) > self.limit:
            self._last.popitem(last=False)
        return uid

    def _scan(self, mntns: int) -> int:
        """A pid in ``mntns`` from one pass over /proc (0 when none, or when a recent pass found none)."""
        now = self._clock()
        if now < self._no_scan_until.get(mntns, 0.0):
            return 0
        self.scans += 1
        try:
            with os.scandir(self.proc) as entries:
                for entry in entries:
                    if entry.name.isdigit():
                        try:
                            if os.stat(f"{entry.path}/ns/mnt").st_ino == mntns:
                                self._no_scan_until.pop(mntns, None)
                                return int(entry.name)
                        except OSError:
                            continue
        except OSError:
            pass
        if len(self._no_scan_until) >= self.limit:
            self._no_scan_until.clear()
        self._no_scan_until[mntns] = now + self.retry
        return 0

    def _counted(self, uid: int) -> int:
        if uid < 0:
            self.unknown += 1
        return uid

    def _through(self, pid: int, mntns: int, path: str) -> int:
        """The owner of ``path`` in ``pid``'s root when ``pid`` is in ``mntns`` (-1: no such file);
        _GONE when ``pid`` cannot answer."""
        root = open_in_pid_mntns(self.proc, pid, mntns, "root", os.O_PATH | os.O_DIRECTORY)
        if root is None:
            return _GONE
        try:
            return _owner_beneath(root, path)
        finally:
            os.close(root)


def _owner_beneath(root: int | str, path: str) -> int:
    """The owner of ``path`` below ``root`` (an fd, or "/": the monitor's own root); -1 if it fails."""
    try:
        if isinstance(root, str):
            return os.stat(path).st_uid
        fd = open_beneath(root, path)
    except OSError:
        return -1
    try:
        return os.fstat(fd).st_uid
    except OSError:
        return -1
    finally:
        os.close(fd)
