"""Thin ctypes wrappers over fanotify(7): constants, init, mark, event parsing."""
from __future__ import annotations

import ctypes
import os
import struct

__all__ = ["FAN_OPEN_EXEC_PERM", "FAN_OPEN_PERM", "FAN_EVENT_ON_CHILD", "FAN_ALLOW", "FAN_DENY", "PERM_EVENTS",
           "FAN_CREATE", "FAN_Q_OVERFLOW", "EVENT_FMT", "EVENT_SIZE", "METADATA_VERSION", "fan_init",
           "fan_init_names", "fan_mark", "response", "created_names"]

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x1, 0x2, 0x4
FAN_REPORT_TID = 0x100  # the event's pid is the acting thread: its /proc/<tid>/syscall is the open
FAN_EVENT_ON_CHILD = 0x08000000
FAN_MARK_ADD, FAN_MARK_REMOVE, FAN_MARK_MOUNT = 0x1, 0x2, 0x10
FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM = 0x10000, 0x20000, 0x40000
PERM_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM
FAN_ALLOW, FAN_DENY = 0x01, 0x02
# notification groups reporting the directory and the entry's name (dirent events need them)
FAN_CLASS_NOTIF, FAN_REPORT_DFID_NAME = 0x0, 0x400 | 0x800
FAN_CREATE, FAN_Q_OVERFLOW = 0x100, 0x4000
_INFO_DFID_NAME = 2
_INFO_HDR, _FSID_AND_HANDLE = "=BBH", "=8xIi"
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


def fan_init_names() -> int:
    """A non-blocking notification group reporting thread ids, and the directory and name of dirent events."""
    flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID | FAN_REPORT_DFID_NAME
    return _check(_lib().fanotify_init(flags, os.O_RDONLY | os.O_CLOEXEC), "fanotify_init")


def created_names(buf: bytes) -> tuple[list[tuple[int, str]], bool]:
    """((tid, name) of each FAN_CREATE event in ``buf``, whether the queue overflowed) for a
    ``fan_init_names`` group: the name comes from the event's directory-fid-and-name record."""
    out: list[tuple[int, str]] = []
    overflow = False
    off = 0
    while off + EVENT_SIZE <= len(buf):
        ev_len, _vers, _, meta_len, mask, _fd, pid = struct.unpack_from(EVENT_FMT, buf, off)
        if ev_len < EVENT_SIZE:
            break
        overflow |= bool(mask & FAN_Q_OVERFLOW)
        info, end = off + meta_len, off + ev_len
        while mask & FAN_CREATE and info + 4 <= end:
            kind, _, length = struct.unpack_from(_INFO_HDR, buf, info)
            if length < 4:
                break
            if kind == _INFO_DFID_NAME:
                handle_bytes, _type = struct.unpack_from(_FSID_AND_HANDLE, buf, info + 4)
                start = info + 4 + struct.calcsize(_FSID_AND_HANDLE) + handle_bytes
                name = buf[start:info + length].split(b"\0", 1)[0]
                out.append((pid, name.decode(errors="surrogateescape")))
            info += length
        off = end
    return out, overflow


def fan_mark(fan_fd: int, add: bool, mask: int, target_fd: int, mount: bool = False) -> None:
    """Add or remove ``mask`` on the inode ``target_fd`` (an O_PATH fd) refers to, or on its mount."""
    flags = (FAN_MARK_ADD if add else FAN_MARK_REMOVE) | (FAN_MARK_MOUNT if mount else 0)
    path = f"/proc/self/fd/{target_fd}".encode()
    _check(_lib().fanotify_mark(fan_fd, flags, mask, _AT_FDCWD, path), "fanotify_mark")


def response(event_fd: int, allow: bool) -> bytes:
    """The struct fanotify_response answering one permission event."""
    return struct.pack("=iI", event_fd, FAN_ALLOW if allow else FAN_DENY)
