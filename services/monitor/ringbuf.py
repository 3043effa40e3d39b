"""A BPF ring buffer consumed straight from its memory map, a bounded number of records per call.

Why not bcc's ``open_ring_buffer``: that calls back through ctypes per record and always drains
everything, so a burst would block the event loop (and the publisher) until the buffer is empty.
Here ``consume(limit)`` takes at most ``limit`` records and returns, leaving the rest in the kernel's
buffer, where an overflow is counted per record by the programs (``lost_kernel``). ``take(limit)`` is
the fast path: it copies the committed records out in one piece and gives their space back to the
kernel at once, so decoding them afterwards never holds kernel space (nor pays a copy per record).

Layout (kernel/bpf/ringbuf.c): page 0 = consumer position (we write it), page 1 = producer position,
then the data pages mapped twice in a row so a record never wraps. Each record has an 8-byte header:
``u32 len`` (bit 31 busy, bit 30 discarded) and ``u32 page offset``; records are 8-byte aligned.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable

from shared.bpf.abi import BPF_RINGBUF_HDR_SZ

__all__ = ["RECORD_HEADER", "Chunk", "RingBuffer"]

_BUSY, _DISCARD = 1 << 31, 1 << 30
# Native formats: one aligned load each ("<Q" reads byte by byte). Never store the consumer position
# with struct.pack_into: it zeroes the target before writing it, and a program reserving a record in
# that instant sees the consumer at 0, the buffer "full", and drops the record (lost_kernel with the
# buffer nearly empty). It is stored through a ctypes word: one aligned 8-byte store.
_U64 = struct.Struct("Q")
_U32 = struct.Struct("I")
# the ring's own 8-byte header in front of each record: u32 len (| busy, discard bits), u32 page offset
RECORD_HEADER = BPF_RINGBUF_HDR_SZ

# (bytes copied out of the ring, offset of every committed record's 8-byte ring header in them)
Chunk = tuple[bytes, list[int]]


class RingBuffer:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map (given its fd and data size in bytes)."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.fd = map_fd  # readable (epoll) while committed records wait
        self.size = size
        self.mask = size - 1
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page
        self._view = memoryview(self._prod)
        self._cons_pos = ctypes.c_uint64.from_buffer(self._cons)

    def pending_bytes(self) -> int:
        """Bytes written by the programs and not consumed yet."""
        return _U64.unpack_from(self._prod, 0)[0] - self._cons_pos.value

    def consume(self, handle: Callable[[bytes], None], limit: int = 1 << 30) -> int:
        """Hand up to ``limit`` committed records to ``handle``; returns how many were taken."""
        cons = self._cons_pos.value
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
                cons += (size + RECORD_HEADER + 7) & ~7
                if not length & _DISCARD:
                    taken += 1
                    handle(view[off + RECORD_HEADER:off + RECORD_HEADER + size].tobytes())
                if cons >= prod:
                    prod = _U64.unpack_from(self._prod, 0)[0]
        finally:
            self._cons_pos.value = cons                # x86: a plain store is a release store
        return taken

    def take(self, limit: int = 1 << 30) -> Chunk:
        """Copy up to ``limit`` committed records out at once and release their space to the kernel.

        Discarded records are skipped; a record still being written ends the chunk. The record at
        offset ``o`` is ``chunk[o + 8:o + 8 + (u32 at o)]``.
        """
        cons = start = self._cons_pos.value
        prod = _U64.unpack_from(self._prod, 0)[0]
        view, mask, base = self._view, self.mask, self._page
        unpack_len = _U32.unpack_from
        offsets: list[int] = []
        append = offsets.append
        taken = 0
        while cons < prod and taken < limit:
            length = unpack_len(view, base + (cons & mask))[0]
            if length & _BUSY:
                break                                  # reserved, not committed yet
            if not length & _DISCARD:
                append(cons - start)
                taken += 1
            cons += ((length & ~(_BUSY | _DISCARD)) + RECORD_HEADER + 7) & ~7
            if cons >= prod:
                prod = _U64.unpack_from(self._prod, 0)[0]
        if cons == start:
            return b"", offsets
        first = base + (start & mask)                  # the data pages are mapped twice: no wrap
        chunk = view[first:first + (cons - start)].tobytes()
        self._cons_pos.value = cons                    # x86: a plain store is a release store
        return chunk, offsets

    def close(self) -> None:
        """Unmap (the map itself belongs to the BPF object)."""
        del self._cons_pos                             # exports self._cons: drop it before the unmap
        self._view.release()
        self._prod.close()
        self._cons.close()
