"""The ring-buffer consumer on a file laid out like a BPF ring buffer's mapping (no kernel needed):
consumer page, producer page, then the data area twice in a row."""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator

import pytest

from services.monitor.ringbuf import RingBuffer

PAGE = mmap.PAGESIZE
SIZE = 4 * PAGE
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    """Writes records the way the kernel does; ``ring`` reads them through the real mappings."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.prod = 0
        os.ftruncate(fd, 2 * PAGE + 2 * SIZE)
        self.ring = RingBuffer(fd, SIZE)

    def _data(self, pos: int, blob: bytes) -> None:
        for copy in (0, SIZE):       # the kernel maps the data pages twice: write both copies
            off = (pos & (SIZE - 1)) + copy
            if off < 2 * SIZE:
                os.pwrite(self.fd, blob[:2 * SIZE - off], 2 * PAGE + off)

    def put(self, body: bytes, flags: int = 0) -> int:
        """Append one record (``flags``: BUSY or DISCARD); returns its position."""
        pos = self.prod
        self._data(pos, struct.pack("<II", len(body) | flags, 0) + body)
        self.prod += (len(body) + 8 + 7) & ~7
        os.pwrite(self.fd, struct.pack("<Q", self.prod), PAGE)
        return pos

    def commit(self, pos: int, length: int) -> None:
        self._data(pos, struct.pack("<I", length))

    def consumer(self) -> int:
        return struct.unpack("<Q", os.pread(self.fd, 8, 0))[0]

    def close(self) -> None:
        self.ring.close()


@pytest.fixture
def fake() -> Iterator[FakeRing]:
    with tempfile.TemporaryFile() as f:
        ring = FakeRing(f.fileno())
        yield ring
        ring.close()


def records(chunk: bytes, offsets: list[int]) -> list[bytes]:
    out = []
    for o in offsets:
        length = struct.unpack_from("<I", chunk, o)[0]
        out.append(chunk[o + 8:o + 8 + length])
    return out


def test_take_copies_committed_records_and_releases_their_space(fake: FakeRing) -> None:
    for body in (b"a" * 5, b"b" * 16, b"c" * 1):
        fake.put(body)
    chunk, offsets = fake.ring.take()
    assert records(chunk, offsets) == [b"a" * 5, b"b" * 16, b"c"]
    assert fake.consumer() == fake.prod and fake.ring.pending_bytes() == 0
    assert fake.ring.take() == (b"", [])


def test_take_stops_at_a_busy_record_and_skips_discarded_ones(fake: FakeRing) -> None:
    fake.put(b"one")
    fake.put(b"gone", DISCARD)
    busy = fake.put(b"two", BUSY)
    fake.put(b"three")
    chunk, offsets = fake.ring.take()
    assert records(chunk, offsets) == [b"one"]
    assert fake.consumer() == busy                 # the discarded record's space is released too
    fake.commit(busy, 3)
    chunk, offsets = fake.ring.take()
    assert records(chunk, offsets) == [b"two", b"three"]


def test_take_honours_the_limit_and_reads_across_the_wrap(fake: FakeRing) -> None:
    body = bytes(range(200)) * 5                   # 1000 bytes: 1008 with the header
    got: list[bytes] = []
    for _ in range(3):                             # more than a lap of the 16 KiB data area
        for _ in range(10):
            fake.put(body)
        while True:
            chunk, offsets = fake.ring.take(limit=4)
            assert len(offsets) <= 4
            if not offsets:
                break
            got += records(chunk, offsets)
    assert got == [body] * 30 and fake.prod > SIZE


def test_consume_hands_records_one_by_one(fake: FakeRing) -> None:
    fake.put(b"x")
    fake.put(b"y")
    seen: list[bytes] = []
    assert fake.ring.consume(seen.append, limit=1) == 1
    assert fake.ring.consume(seen.append) == 1
    assert seen == [b"x", b"y"] and fake.ring.pending_bytes() == 0


def test_the_consumer_position_is_stored_as_one_word(fake: FakeRing) -> None:
    # struct.pack_into zeroes its target before writing: the kernel could read 0 in between and
    # refuse records as if the buffer were full. The position goes through an aligned ctypes word.
    assert isinstance(fake.ring._cons_pos, ctypes.c_uint64)
    fake.put(b"z")
    fake.ring.take()
    assert fake.consumer() == fake.prod
