"""Pure decoders from ring-buffer records to :class:`RawEvent`, chosen by the record's op code.

The layouts come from :mod:`shared.bpf.abi` (the Python copy of ``bpf/include/events.h``, which the
monitor's start-up self-check compares with the compiled header's BTF).
"""
from __future__ import annotations

import ctypes
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.bpf.abi import (
    BW_EXEC_FILENAME_FROM_KERNEL,
    BW_EXEC_FILENAME_TRUNCATED,
    BW_OP_EXEC,
    BW_SYS_EXECVE,
    BW_SYS_EXECVEAT,
    BW_TTY_LEN,
    BwEventHdr,
    BwExecEvent,
    c_text,
    layout,
    offset,
)
from shared.bpf.paths import PATH_SIZE, decode_path
from shared.errors import DecodeError
from shared.schemas.events import RawEvent

__all__ = ["DecodeContext", "decode", "boot_offset_ns", "HEADER", "EXEC_SIZE", "AT_FDCWD"]

AT_FDCWD = -100
SYSCALLS = {BW_SYS_EXECVE: "execve", BW_SYS_EXECVEAT: "execveat"}

# struct bw_event_hdr: op, size, ktime
HEADER = layout(BwEventHdr)
# struct bw_exec_event up to (not including) its three struct bw_path members
_EXEC_HEAD = layout(BwExecEvent, stop="exe")
EXEC_SIZE = ctypes.sizeof(BwExecEvent)
_EXE, _PARENT, _CWD, _TTY = (offset(BwExecEvent, name) for name in ("exe", "parent_exe", "cwd", "tty"))


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a decoder needs besides the bytes: where and when this boot happened."""

    node: str
    boot_id: str
    boot_offset_ns: int  # wall-clock ns at CLOCK_MONOTONIC 0


def boot_offset_ns() -> int:
    """Wall clock minus the monotonic clock bpf_ktime_get_ns() uses (sample once at start)."""
    return time.time_ns() - time.monotonic_ns()


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
    exe, exe_cut = decode_path(data[_EXE:_EXE + PATH_SIZE])
    parent_exe, parent_cut = decode_path(data[_PARENT:_PARENT + PATH_SIZE])
    cwd, cwd_cut = decode_path(data[_CWD:_CWD + PATH_SIZE])
    filename = c_text(filename_raw)
    path = _resolve(filename, cwd if not cwd_cut else "", dirfd)
    extra: dict[str, object] = {}
    if path != filename:
        extra["filename"] = filename
    if syscall == BW_SYS_EXECVEAT:
        extra["dirfd"] = dirfd
    if flags & BW_EXEC_FILENAME_TRUNCATED:
        extra["filename_truncated"] = True
    if flags & BW_EXEC_FILENAME_FROM_KERNEL:
        extra["filename_from_kernel"] = True
    cut = [name for name, c in (("exe", exe_cut), ("parent_exe", parent_cut), ("cwd", cwd_cut)) if c]
    if cut:
        extra["truncated"] = cut
    tty = c_text(data[_TTY:_TTY + BW_TTY_LEN])
    if tty:
        extra["tty"] = tty
    return RawEvent(
        kind="exec", ts_ns=ctx.boot_offset_ns + ktime, node=ctx.node, pid=pid, tid=tid, ppid=ppid,
        ns_pid=ns_pid, ns_ppid=ns_ppid, uid=uid, gid=gid, mntns=mntns, pidns=pidns,
        cgroup_id=cgroup_id, comm=c_text(comm), exe=exe, path=path, ret=ret,
        syscall=SYSCALLS[syscall], parent_exe=parent_exe, cwd=cwd, flags=at_flags,
        event_id=f"{ctx.node}:{ctx.boot_id}:{ktime}:{tid}", extra=extra,
    )


_DECODERS: dict[int, tuple[int, Callable[[bytes, DecodeContext], RawEvent]]] = {
    BW_OP_EXEC: (EXEC_SIZE, _decode_exec),
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
