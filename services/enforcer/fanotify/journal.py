"""The fanotify reader's journal: which permission events it has read and not answered yet.

A small memfd shared with the holder (``bulwark.fdholder``). The kernel answers a permission event by
its fd number, whoever writes the answer, and keeps an event that was read but not answered waiting
as long as the group lives. When the enforcer dies, the holder reads this journal and answers those
events itself (deny in a selected namespace), so none waits forever and none is allowed by default.

Layout (native endianness): state u32, batch length u32, answered offset u32, fd limit u32, then a
copy of the last batch as the kernel returned it (``struct fanotify_event_metadata`` records).
"""
from __future__ import annotations

import mmap
import os
import resource
import struct
from collections.abc import Iterator

from services.enforcer.fanotify import syscalls as fs

__all__ = ["Journal", "IDLE", "READING", "DECIDING", "SIZE"]

IDLE, READING, DECIDING = 0, 1, 2
_HEAD = struct.Struct("=IIII")
BATCH_MAX = 64 * 1024
SIZE = _HEAD.size + BATCH_MAX


class Journal:
    """One mapping of the journal memfd (the reader's or the holder's)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.mm = mmap.mmap(fd, SIZE)
        self._nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1 << 20)

    @classmethod
    def create(cls) -> Journal:
        """A new, empty journal on a fresh memfd (close-on-exec)."""
        fd = os.memfd_create("bulwark-fanotify-journal", os.MFD_CLOEXEC)
        os.ftruncate(fd, SIZE)
        return cls(fd)

    # -- the reader ---------------------------------------------------------------------------
    def reading(self) -> None:
        """About to read: if we die now, unknown events may be left unanswered."""
        _HEAD.pack_into(self.mm, 0, READING, 0, 0, self._nofile)

    def batch(self, buf: bytes) -> None:
        """The batch just read, none answered yet."""
        n = min(len(buf), BATCH_MAX)
        self.mm[_HEAD.size:_HEAD.size + n] = buf[:n]
        struct.pack_into("=III", self.mm, 0, DECIDING, n, 0)

    def answered(self, end: int) -> None:
        """Every event of the batch before byte offset ``end`` is answered."""
        struct.pack_into("=I", self.mm, 8, end)

    def idle(self) -> None:
        """Every event read so far is answered."""
        struct.pack_into("=I", self.mm, 0, IDLE)

    # -- the holder ---------------------------------------------------------------------------
    def state(self) -> tuple[int, int]:
        """(state, fd limit) as the reader left them."""
        st, _n, _done, nofile = _HEAD.unpack_from(self.mm, 0)
        return st, nofile

    def unanswered(self) -> Iterator[tuple[int, int, int]]:
        """(mask, event fd, tid) of the permission events of the batch not answered yet."""
        st, n, done, _ = _HEAD.unpack_from(self.mm, 0)
        if st != DECIDING:
            return
        off = done
        while off + fs.EVENT_SIZE <= n:
            ev_len, vers, _, _, mask, efd, pid = struct.unpack_from(fs.EVENT_FMT, self.mm, _HEAD.size + off)
            if vers != fs.METADATA_VERSION or ev_len < fs.EVENT_SIZE:
                return
            off += ev_len
            if efd >= 0 and mask & fs.PERM_EVENTS:
                yield mask, efd, pid

    def close(self) -> None:
        """Unmap and close the memfd."""
        self.mm.close()
        os.close(self.fd)
