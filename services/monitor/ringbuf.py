"""A BPF ring buffer consumed straight from its memory map, a bounded number of records per call.

Why not bcc's ``open_ring_buffer``: that calls back through ctypes per record and always drains
everything, so a burst would block the event loop (and the publisher) until the buffer is empty.
Here ``consume(limit)`` takes at most ``limit`` records and returns, leaving the rest in the kernel's
buffer, where an overflow is counted per record by the programs (``lost_kernel``).

Layout (kernel/bpf/ringbuf.c): page 0 = consumer position (we write it), page 1 = producer position,
then the data pages mapped twice in a row so a record never wraps. Each record has an 8-byte header:
``u32 len`` (bit 31 busy, bit 30 discarded) and ``u32 page offset``; records are 8-byte aligned.
"""
from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

__all__ = ["RingBuffer"]

_BUSY, _DISCARD = 1 << 31, 1 << 30
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map (given its fd and data size in bytes)."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.size = size
        self.mask = size - 1
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page
        self._view = memoryview(self._prod)

    def pending_bytes(self) -> int:
        """Bytes written by the programs and not consumed yet."""
        return _U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

    def consume(self, handle: Callable[[bytes], None], limit: int = 1 << 30) -> int:
        """Hand up to ``limit`` committed records to ``handle``; returns how many were taken."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._prod, 0)[0]
        view, mask, base, taken = self._view, self.mask, self._page, 0
        unpack_len = _U32.unpack_from
        try:
            while cons < prod and taken < limit:
                off = base + (cons & mask)
                length = unpack_len(view, off)[0]
                if length & _BUSY:
                    break                              # reserved, not committed yet
                size = length & ~(_BUSY | _DISCARD)
                cons += (size + 8 + 7) & ~7
                if not length & _DISCARD:
                    taken += 1
                    handle(view[off + 8:off + 8 + size].tobytes())
                if cons >= prod:
                    prod = _U64.unpack_from(self._prod, 0)[0]
        finally:
            _U64.pack_into(self._cons, 0, cons)        # x86: a plain store is a release store
        return taken

    def close(self) -> None:
        """Unmap (the map itself belongs to the BPF object)."""
        self._view.release()
        self._prod.close()
        self._cons.close()
