"""Thin ctypes wrappers over fanotify(7): constants, init, mark, event parsing."""
from __future__ import annotations

import ctypes
import os
import struct

__all__ = ["FAN_OPEN_EXEC_PERM", "FAN_OPEN_PERM", "FAN_EVENT_ON_CHILD", "FAN_ALLOW", "FAN_DENY", "PERM_EVENTS",
           "EVENT_FMT", "EVENT_SIZE", "METADATA_VERSION", "fan_init", "fan_mark", "response"]

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x1, 0x2, 0x4
FAN_REPORT_TID = 0x100  # the event's pid is the acting thread: its /proc/<tid>/syscall is the open
FAN_EVENT_ON_CHILD = 0x08000000
FAN_MARK_ADD, FAN_MARK_REMOVE, FAN_MARK_MOUNT = 0x1, 0x2, 0x10
FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM = 0x10000, 0x20000, 0x40000
PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM
FAN_ALLOW, FAN_DENY = 0x01, 0x02
METADATA_VERSION = 3
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
EVENT_FMT = "=IBBHQii"
EVENT_SIZE = struct.calcsize(EVENT_FMT)
_AT_FDCWD = -100

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        _libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                        ctypes.c_char_p]
    return _libc


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def fan_init() -> int:
    """A non-blocking, close-on-exec fanotify group of the content class (permission events), reporting thread ids."""
    flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID
    return _check(_lib().fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC), "fanotify_init")


def fan_mark(fan_fd: int, add: bool, mask: int, target_fd: int, mount: bool = False) -> None:
    """Add or remove ``mask`` on the inode ``target_fd`` (an O_PATH fd) refers to, or on its mount."""
    flags = (FAN_MARK_ADD if add else FAN_MARK_REMOVE) | (FAN_MARK_MOUNT if mount else 0)
    path = f"/proc/self/fd/{target_fd}".encode()
    _check(_lib().fanotify_mark(fan_fd, flags, mask, _AT_FDCWD, path), "fanotify_mark")


def response(event_fd: int, allow: bool) -> bytes:
    """The struct fanotify_response answering one permission event."""
    return struct.pack("=iI", event_fd, FAN_ALLOW if allow else FAN_DENY)
