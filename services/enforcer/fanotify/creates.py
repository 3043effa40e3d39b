"""Undoing the file a refused open created: what fanotify can do for "no new files here".

fanotify asks for a verdict on an open only once the file is open, and for ``open(O_CREAT)`` of a name
that does not exist the kernel has created the file by then. Refusing the open alone leaves a new empty
file behind, and ``touch`` then succeeds anyway (it falls back to utimensat on the name). So the
directories Block rules name are also watched by a notification group for FAN_CREATE (which the
kernel queues before the open's permission event). When an open of a selected workload is refused, its
flags say O_CREAT, and that very thread just created that name in a watched directory, the entry is
removed before the verdict is given: the thread, still asleep in its open, gets EPERM and no file.

Only an entry that is still the refused open's inode (same device and inode, one link, empty, a regular
file) is removed. What stays out of reach: creates the open did not make (mknod, link, rename into the
directory, mkdir), metadata changes (chmod, chown, utimes), and creates under matchPatterns or
allow-lists, whose mount marks cannot carry FAN_CREATE (their refused create leaves the empty file).
"""
from __future__ import annotations

import logging
import os
import stat

from services.enforcer.fanotify import syscalls as fs
from services.enforcer.fanotify.access import EXEC_LIKE, open_flags

__all__ = ["CreateWatch"]

log = logging.getLogger("bulwark.enforcer.fanotify")

_REMEMBERED = 4096  # (tid, name) creates kept between drains


class CreateWatch:
    """A FAN_CREATE notification group on the directories Block rules name."""

    def __init__(self) -> None:
        self.fd = fs.fan_init_names()
        self._marks: dict[tuple[int, int], int] = {}   # dir (dev, ino) -> our O_PATH fd
        self._recent: dict[tuple[int, str], None] = {}  # (tid, name), oldest first
        self.overflows = 0

    def sync(self, dirs: dict[tuple[int, int], int]) -> int:
        """Watch exactly ``dirs`` ((dev, ino) -> an O_PATH fd, not kept); the number of mark errors."""
        errors = 0
        for key, fd in dirs.items():
            if key in self._marks:
                continue
            own = os.dup(fd)
            try:
                fs.fan_mark(self.fd, True, fs.FAN_CREATE, own)
                self._marks[key] = own
            except OSError as exc:
                errors += 1
                os.close(own)
                log.error("cannot watch creates", extra={"dev_ino": f"{key}", "error": str(exc)})
        for key in [k for k in self._marks if k not in dirs]:
            own = self._marks.pop(key)
            try:
                fs.fan_mark(self.fd, False, fs.FAN_CREATE, own)
            except OSError:
                pass  # the directory is gone, and its mark with it
            finally:
                os.close(own)
        return errors

    def drain(self) -> None:
        """Read every queued create (never blocks)."""
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            if not buf:
                return
            names, overflow = fs.created_names(buf)
            self.overflows += int(overflow)
            for key in names:
                self._recent.pop(key, None)
                self._recent[key] = None
            while len(self._recent) > _REMEMBERED:
                del self._recent[next(iter(self._recent))]

    def undo(self, tid: int, efd: int, watched: set[tuple[int, int]]) -> bool:
        """Remove the entry thread ``tid`` just created for the refused open ``efd``, if its open asks
        O_CREAT and it did create it; ``watched`` are the marked directories' (dev, ino)."""
        flags = open_flags(tid)
        if flags is None or flags == EXEC_LIKE or not flags & os.O_CREAT:
            return False
        self.drain()
        seen = os.readlink(f"/proc/self/fd/{efd}")
        parent, name = os.path.split(seen)
        if (tid, name) not in self._recent:
            return False
        del self._recent[(tid, name)]
        st = os.fstat(efd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != 0:
            return False
        for where in (parent, f"/proc/{tid}/root{parent}"):  # as we see it, or inside the workload's root
            try:
                dfd = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                dst = os.fstat(dfd)
                entry = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if (dst.st_dev, dst.st_ino) not in watched or (entry.st_dev, entry.st_ino) != (st.st_dev, st.st_ino):
                    continue
                os.unlink(name, dir_fd=dfd)
                return True
            except OSError:
                continue
            finally:
                os.close(dfd)
        return False

    def close(self) -> None:
        """Drop the group and every watch."""
        for own in self._marks.values():
            os.close(own)
        self._marks.clear()
        os.close(self.fd)
