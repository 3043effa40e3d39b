"""An exec'd program as the workload's mount namespace sees the file: its owner (ownerOnly rules) and
its real path (the symlinks of the path the exec asked for, resolved).

The kernel's exec record carries neither, and its exit could not give the right ones: for a script the
new image's file is the interpreter, not the program asked for, and a refused exec has no new image. So
the file is looked up here, by the path the exec asked for, inside the workload's root
(``/proc/<pid>/root``, symlinks resolved inside it as the exec resolved them): its owner, the way
KubeArmor judges ownerOnly by the file's owner, and the path its symlinks lead to, which the kernel's
enforcers judge (``/usr/bin/python3`` runs ``/usr/bin/python3.6``: a rule naming the latter blocks it).
The root is taken from the exec'ing process, its parent, the last process that answered for that
namespace, or else any process found in it by a scan of /proc (at most one scan per namespace every
``retry`` seconds while none is found), each pinned by its /proc directory and checked to still be in
the namespace (a reused pid answers for no other one); the monitor's own namespace uses its own root.
-1 (owner) or "" (real path) when the path does not resolve there, or when no process of the namespace
is left by the time the record is read (a namespace whose every process already ended: then an
ownerOnly rule sees no owner, and a rule naming a symlink's target only the path as written).
"""
from __future__ import annotations

import errno
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from shared.procroot import open_beneath, open_in_pid_mntns

__all__ = ["WorkloadFiles", "MAX_LINKS"]

MAX_LINKS = 40  # symlinks followed in one path, as the kernel's own limit
T = TypeVar("T")


class _Gone(Exception):
    """This pid cannot answer (gone, or in another namespace): try the next one."""


class WorkloadFiles:
    """(mntns, absolute path) -> the file's owner uid (host view, as event uids are), or -1; and its real
    path inside the namespace, or ""."""

    def __init__(self, proc: str = "/proc", limit: int = 4096, retry: float = 2.0, real_path_ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.proc, self.limit, self.retry, self._clock = proc, limit, retry, clock
        self.real_path_ttl = real_path_ttl
        # (mntns, path) -> (real path, until when it is reused): a build's thousand execs of the same
        # compiler resolve it once; a symlink changed meanwhile is seen at most real_path_ttl late
        self._real: OrderedDict[tuple[int, str], tuple[str, float]] = OrderedDict()
        self._last: OrderedDict[int, int] = OrderedDict()  # mntns -> a pid that answered for it
        self._no_scan_until: dict[int, float] = {}  # mntns -> when a scan may look for it again
        try:
            self._own_mntns = os.stat(f"{proc}/self/ns/mnt").st_ino
        except OSError:
            self._own_mntns = -1
        self.lookups = 0
        self.unknown = 0
        self.scans = 0
        self.real_path_lookups = 0

    def owner(self, mntns: int, path: str, pids: tuple[int, ...]) -> int:
        """The owner of ``path`` in ``mntns``, looked up through the first of ``pids`` (then the last
        process that answered for ``mntns``) still in that namespace; -1 when unknown."""
        if not path.startswith("/"):
            return -1
        self.lookups += 1
        uid = self._in_root(mntns, pids, lambda root: _owner_beneath(root, path), -1)
        if uid < 0:
            self.unknown += 1
        return uid

    def real_path(self, mntns: int, path: str, pids: tuple[int, ...]) -> str:
        """``path`` with every symlink in it resolved inside ``mntns``'s root (as the exec resolved it), ""
        when unknown (no such file, a loop, no process of the namespace left)."""
        if not path.startswith("/"):
            return ""
        now, key = self._clock(), (mntns, path)
        known = self._real.get(key)
        if known is not None and now < known[1]:
            return known[0]
        self.real_path_lookups += 1
        real = self._in_root(mntns, pids, lambda root: _resolve_beneath(root, path), "")
        if real:
            self._real[key] = (real, now + self.real_path_ttl)
            self._real.move_to_end(key)
            if len(self._real) > self.limit:
                self._real.popitem(last=False)
        return real

    def _in_root(self, mntns: int, pids: tuple[int, ...], look: Callable[[int | str], T], unknown: T) -> T:
        """``look(root)`` with the root of ``mntns`` (an fd, or "/" for our own namespace), taken from the
        first of ``pids``, the last process that answered, or a scan; ``unknown`` when none can answer."""
        if mntns == self._own_mntns:
            return look("/")
        tried: set[int] = set()
        for pid in (*pids, self._last.get(mntns, 0)):
            if pid <= 0 or pid in tried:
                continue
            tried.add(pid)
            try:
                return self._answered(mntns, pid, self._through(pid, mntns, look))
            except _Gone:
                continue
        self._last.pop(mntns, None)
        pid = self._scan(mntns)
        try:
            return self._answered(mntns, pid, self._through(pid, mntns, look)) if pid else unknown
        except _Gone:
            return unknown

    def _answered(self, mntns: int, pid: int, answer: T) -> T:
        """Remember ``pid`` as one that answers for ``mntns``; returns ``answer``."""
        self._last[mntns] = pid
        self._last.move_to_end(mntns)
        if len(self._last) > self.limit:
            self._last.popitem(last=False)
        return answer

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

    def _through(self, pid: int, mntns: int, look: Callable[[int | str], T]) -> T:
        """``look(root)`` with ``pid``'s root when ``pid`` is in ``mntns``; _Gone when it cannot answer."""
        root = open_in_pid_mntns(self.proc, pid, mntns, "root", os.O_PATH | os.O_DIRECTORY)
        if root is None:
            raise _Gone
        try:
            return look(root)
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


def _resolve_beneath(root: int | str, path: str) -> str:
    """``path`` with its symlinks resolved below ``root`` (an fd, or "/"), absolute targets from ``root``
    and ``..`` never above it, as openat2's RESOLVE_IN_ROOT does; "" when a component is missing or more
    than MAX_LINKS symlinks are met. Each component is read with readlinkat from ``root`` through the
    components already resolved (none of which is a symlink)."""
    todo = [part for part in reversed(path.split("/")) if part]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        where = "/".join([*done, part])
        try:
            target = os.readlink(where, dir_fd=root) if isinstance(root, int) else os.readlink("/" + where)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a symlink: a component of the real path
                done.append(part)
                continue
            return ""
        links += 1
        if links > MAX_LINKS:
            return ""
        if target.startswith("/"):
            done = []
        todo.extend(p for p in reversed(target.split("/")) if p)
    return "/" + "/".join(done)
