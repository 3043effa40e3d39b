"""Pure decoders from ring-buffer records to :class:`RawEvent`, chosen by the record's op code.

The layouts here mirror ``bpf/include/events.h`` (the one kernel<->user contract); the monitor's
start-up self-check compares :data:`EXEC_LAYOUT` with what the compiler made of that header.
"""
from __future__ import annotations

import posixpath
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import DecodeError
from shared.schemas.events import RawEvent

__all__ = ["DecodeContext", "decode", "decode_path", "boot_offset_ns", "HEADER", "OP_EXEC",
           "EXEC_SIZE", "EXEC_LAYOUT", "AT_FDCWD"]

OP_EXEC = 1
AT_FDCWD = -100
SYSCALLS = {0: "execve", 1: "execveat"}

PATH_COMPLETE = 1
PATH_TRUNCATED = 2
FILENAME_TRUNCATED = 1
FILENAME_FROM_KERNEL = 2

# struct bw_event_hdr: op, size, ktime
HEADER = struct.Struct("<IIQ")
# struct bw_exec_event up to (not including) the three struct bw_path members
_EXEC_HEAD = struct.Struct("<IIQ" "10I" "i" "3I" "Q" "q" "16s" "512s")
# struct bw_path: len, flags, depth, pad, buf[BW_PATH_BUF]
_PATH = struct.Struct("<HHHH768s")
EXEC_SIZE = _EXEC_HEAD.size + 3 * _PATH.size
EXEC_LAYOUT: dict[str, int] = {
    "sizeof": EXEC_SIZE, "pid": 16, "ret": 80, "comm": 88, "filename": 104,
    "exe": _EXEC_HEAD.size, "parent_exe": _EXEC_HEAD.size + _PATH.size,
    "cwd": _EXEC_HEAD.size + 2 * _PATH.size,
}


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a decoder needs besides the bytes: where and when this boot happened."""

    node: str
    boot_id: str
    boot_offset_ns: int  # wall-clock ns at CLOCK_MONOTONIC 0


def boot_offset_ns() -> int:
    """Wall clock minus the monotonic clock bpf_ktime_get_ns() uses (sample once at start)."""
    return time.time_ns() - time.monotonic_ns()


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def decode_path(raw: bytes) -> tuple[str, bool]:
    """A struct bw_path as (path, truncated); components come leaf first, NUL-terminated."""
    if len(raw) != _PATH.size:
        raise DecodeError(f"path record is {len(raw)} bytes, expected {_PATH.size}")
    length, flags, depth, _pad, buf = _PATH.unpack(raw)
    if length > len(buf):
        raise DecodeError(f"path length {length} exceeds its buffer")
    if not flags & (PATH_COMPLETE | PATH_TRUNCATED):
        return "", False
    parts = [p.decode("utf-8", "backslashreplace") for p in buf[:length].split(b"\0") if p]
    if len(parts) != depth:
        raise DecodeError(f"path has {len(parts)} components, header says {depth}")
    joined = "/".join(reversed(parts))
    if flags & PATH_COMPLETE:
        return "/" + joined, False
    return ".../" + joined, True


def _resolve(filename: str, cwd: str, dirfd: int) -> str:
    """The program asked for: relative names (against the cwd) made absolute when the cwd is known."""
    if not filename or filename.startswith("/") or dirfd != AT_FDCWD or not cwd.startswith("/"):
        return filename
    return posixpath.normpath(posixpath.join(cwd, filename))


def _decode_exec(data: bytes, ctx: DecodeContext) -> RawEvent:
    if len(data) < EXEC_SIZE:
        raise DecodeError(f"exec record is {len(data)} bytes, expected {EXEC_SIZE}")
    (_op, _size, ktime, pid, tid, ppid, ns_pid, ns_ppid, uid, gid, mntns, pidns, syscall, dirfd,
     flags, at_flags, _pad, cgroup_id, ret, comm, filename_raw) = _EXEC_HEAD.unpack_from(data, 0)
    if syscall not in SYSCALLS:
        raise DecodeError(f"exec record has unknown syscall {syscall}")
    base = _EXEC_HEAD.size
    exe, exe_cut = decode_path(data[base:base + _PATH.size])
    parent_exe, parent_cut = decode_path(data[base + _PATH.size:base + 2 * _PATH.size])
    cwd, cwd_cut = decode_path(data[base + 2 * _PATH.size:base + 3 * _PATH.size])
    filename = _text(filename_raw)
    path = _resolve(filename, cwd if not cwd_cut else "", dirfd)
    extra: dict[str, object] = {}
    if path != filename:
        extra["filename"] = filename
    if syscall == 1:
        extra["dirfd"] = dirfd
    if flags & FILENAME_TRUNCATED:
        extra["filename_truncated"] = True
    if flags & FILENAME_FROM_KERNEL:
        extra["filename_from_kernel"] = True
    cut = [name for name, c in (("exe", exe_cut), ("parent_exe", parent_cut), ("cwd", cwd_cut)) if c]
    if cut:
        extra["truncated"] = cut
    return RawEvent(
        kind="exec", ts_ns=ctx.boot_offset_ns + ktime, node=ctx.node, pid=pid, tid=tid, ppid=ppid,
        ns_pid=ns_pid, ns_ppid=ns_ppid, uid=uid, gid=gid, mntns=mntns, pidns=pidns,
        cgroup_id=cgroup_id, comm=_text(comm), exe=exe, path=path, ret=ret,
        syscall=SYSCALLS[syscall], parent_exe=parent_exe, cwd=cwd, flags=at_flags,
        event_id=f"{ctx.node}:{ctx.boot_id}:{ktime}:{tid}", extra=extra,
    )


_DECODERS: dict[int, tuple[int, Callable[[bytes, DecodeContext], RawEvent]]] = {
    OP_EXEC: (EXEC_SIZE, _decode_exec),
}


def decode(data: bytes, ctx: DecodeContext) -> RawEvent:
    """Decode one ring-buffer record; :class:`DecodeError` when it is short, unknown or inconsistent."""
    if len(data) < HEADER.size:
        raise DecodeError(f"record of {len(data)} bytes is shorter than the header")
    op, size, _ktime = HEADER.unpack_from(data, 0)
    entry = _DECODERS.get(op)
    if entry is None:
        raise DecodeError(f"unknown op code {op}")
    expected, decoder = entry
    if size != expected or len(data) < size:
        raise DecodeError(f"op {op}: header size {size}, record {len(data)} bytes, expected {expected}")
    return decoder(bytes(data[:size]), ctx)
