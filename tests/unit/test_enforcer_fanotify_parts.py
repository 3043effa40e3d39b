"""Parts of the fanotify enforcer that need no kernel marks: the FAN_CREATE record parser
(services/enforcer/fanotify/syscalls.py). The kernel tests run it for real."""
from __future__ import annotations

import struct

from services.enforcer.fanotify import syscalls as fs


def _create_event(tid: int, name: bytes, mask: int = fs.FAN_CREATE) -> bytes:
    handle = b"\x01" * 8
    record = struct.pack("=8xIi", len(handle), 1) + handle + name + b"\0"
    record += b"\0" * (-(len(record) + 4) % 4)
    info = struct.pack("=BBH", 2, 0, len(record) + 4) + record
    meta = struct.pack(fs.EVENT_FMT, fs.EVENT_SIZE + len(info), fs.METADATA_VERSION, 0, fs.EVENT_SIZE, mask, -1, tid)
    return meta + info


def test_create_records_give_the_thread_and_the_name() -> None:
    buf = _create_event(41, b"new") + _create_event(42, b"a longer name.txt")
    assert fs.created_names(buf) == ([(41, "new"), (42, "a longer name.txt")], False)


def test_other_events_and_overflow() -> None:
    overflow = struct.pack(fs.EVENT_FMT, fs.EVENT_SIZE, fs.METADATA_VERSION, 0, fs.EVENT_SIZE, fs.FAN_Q_OVERFLOW,
                           -1, 0)
    names, lost = fs.created_names(_create_event(7, b"x", mask=0x2) + overflow)
    assert names == [] and lost

