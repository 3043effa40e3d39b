"""Stateful decoding of every ring-buffer record into RawEvent wire maps (plain dicts, for speed).

Process records (BW_OP_PROC) carry a process's exe once; they fill :class:`ProcCache` and produce no
event. Every other record becomes one map with the fields of :class:`shared.schemas.events.RawEvent`
(same keys, same order). Layouts mirror bpf/include/events.h; the self-check compares them.
"""
from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Callable
from typing import Any

from shared.errors import DecodeError
from services.monitor import decoder as exec_decoder
from services.monitor.decoder import HEADER, DecodeContext, decode_path
from services.monitor.kinds_kernel import KIND_OF_OP, describe
from services.monitor.syscall_table import syscall_name

__all__ = ["RecordDecoder", "ProcCache", "SYS_HEAD", "SYS_LAYOUT", "PROC_SIZE", "OP_PROC",
           "DIR_CWD", "DIR_FD", "NAME_FAULT", "NAME_TRUNC", "AUX_STR", "SOCK"]

OP_PROC = 2
DIR_CWD, DIR_FD, NAME_FAULT, NAME_TRUNC, AUX_STR, SOCK = 1, 2, 4, 8, 16, 32

# struct bw_event_hdr + struct bw_task_info
_TASK = struct.Struct("<IIQ" "10I" "Q" "16s")
# struct bw_sys_event up to aux: hdr, task, ret, args[6], syscall, flags, name_len, aux_len, pad[3]
SYS_HEAD = struct.Struct("<IIQ" "10I" "Q" "16s" "q" "6q" "i" "HHH" "6x")
_PATH_SIZE = 776
_AUX_OFF, _NAME_OFF, _DIR_OFF = SYS_HEAD.size, SYS_HEAD.size + 128, SYS_HEAD.size + 128 + 512
SYS_SIZE = _DIR_OFF + _PATH_SIZE
PROC_SIZE = _TASK.size + _PATH_SIZE
SYS_LAYOUT: dict[str, int] = {"sizeof": SYS_SIZE, "ret": 80, "syscall": 136, "aux": _AUX_OFF,
                              "name": _NAME_OFF, "dir": _DIR_OFF, "proc_sizeof": PROC_SIZE}


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


class ProcCache:
    """tgid -> canonical exe, from process records; /proc/<tgid>/exe when a record was missed."""

    def __init__(self, limit: int = 131072) -> None:
        self.limit = limit
        self._exe: dict[int, str] = {}
        self.misses = 0
        self.records = 0

    def put(self, tgid: int, exe: str) -> None:
        """Remember ``tgid``'s exe (the newest record wins)."""
        self.records += 1
        self._exe.pop(tgid, None)
        self._exe[tgid] = exe
        if len(self._exe) > self.limit:
            del self._exe[next(iter(self._exe))]

    def get(self, tgid: int) -> str:
        """The exe of ``tgid``; falls back to /proc (counted in ``misses``)."""
        exe = self._exe.get(tgid)
        if exe is not None:
            return exe
        self.misses += 1
        try:
            exe = os.readlink(f"/proc/{tgid}/exe")
        except OSError:
            exe = ""
        self._exe[tgid] = exe
        return exe

    def peek(self, tgid: int) -> str:
        """The cached exe of ``tgid``, or "" (no /proc fallback)."""
        return self._exe.get(tgid, "")

    def forget(self, tgid: int) -> None:
        """Drop ``tgid`` (its process exited)."""
        self._exe.pop(tgid, None)


class RecordDecoder:
    """Bytes from the ring buffer -> RawEvent maps (or None for process records)."""

    def __init__(self, ctx: DecodeContext, procs: ProcCache | None = None) -> None:
        self.ctx = ctx
        self.procs = procs or ProcCache()
        self._prefix = f"{ctx.node}:{ctx.boot_id}:"
        self._comms: dict[bytes, str] = {}
        self._handlers: dict[int, Callable[[bytes], dict[str, Any] | None]] = {
            exec_decoder.OP_EXEC: self._exec, OP_PROC: self._proc}
        for op in KIND_OF_OP:
            self._handlers[op] = self._sys

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """Decode one record; DecodeError when it is short, unknown or inconsistent."""
        if len(data) < HEADER.size:
            raise DecodeError(f"record of {len(data)} bytes is shorter than the header")
        op, size, _ktime = HEADER.unpack_from(data, 0)
        handler = self._handlers.get(op)
        if handler is None:
            raise DecodeError(f"unknown op code {op}")
        if size > len(data):
            raise DecodeError(f"op {op}: header size {size} exceeds the record ({len(data)} bytes)")
        return handler(data[:size] if size < len(data) else data)

    def _exec(self, data: bytes) -> dict[str, Any]:
        return exec_decoder.decode(data, self.ctx).to_wire()

    def _proc(self, data: bytes) -> None:
        if len(data) != PROC_SIZE:
            raise DecodeError(f"process record is {len(data)} bytes, expected {PROC_SIZE}")
        pid = _TASK.unpack_from(data, 0)[3]
        self.procs.put(pid, decode_path(data[_TASK.size:])[0])
        return None

    def _comm(self, raw: bytes) -> str:
        comm = self._comms.get(raw)
        if comm is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            comm = self._comms[raw] = _text(raw)
        return comm

    def _sys(self, data: bytes) -> dict[str, Any]:
        if len(data) < _NAME_OFF:
            raise DecodeError(f"record is {len(data)} bytes, shorter than {_NAME_OFF}")
        (op, _size, ktime, pid, tid, ppid, ns_pid, ns_ppid, uid, gid, mntns, pidns, _pad, cgroup_id,
         comm, ret, a0, a1, a2, a3, a4, a5, nr, flags, name_len, aux_len) = SYS_HEAD.unpack_from(data, 0)
        name = ""
        if name_len:
            if _NAME_OFF + name_len > len(data):
                raise DecodeError(f"name of {name_len} bytes overruns the record")
            name = data[_NAME_OFF:_NAME_OFF + name_len].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        extra: dict[str, Any] = {}
        cwd = ""
        path = name
        if flags & (DIR_CWD | DIR_FD):
            if len(data) < SYS_SIZE:
                raise DecodeError(f"record with a dir is {len(data)} bytes, expected {SYS_SIZE}")
            base, cut = decode_path(data[_DIR_OFF:SYS_SIZE])
            if flags & DIR_CWD:
                cwd = base
            if cut:
                extra["truncated"] = ["dir"]
            if base.startswith("/"):
                path = posixpath.normpath(posixpath.join(base, name)) if name else base
                if name:
                    extra["filename"] = name
        if flags & NAME_FAULT:
            extra["name_fault"] = True
        if flags & NAME_TRUNC:
            extra["name_truncated"] = True
        kind = KIND_OF_OP[op]
        exe = self.procs.get(pid)
        if op == 4:                       # exit: the process is gone after this record
            self.procs.forget(pid)
        aux = data[_AUX_OFF:_AUX_OFF + aux_len] if aux_len else b""
        sysname = syscall_name(nr) if nr >= 0 else ""
        path, open_flags = describe(op, sysname, flags, (a0, a1, a2, a3, a4, a5), ret, path, aux, exe, extra)
        return {
            "kind": kind, "ts_ns": self.ctx.boot_offset_ns + ktime, "node": self.ctx.node, "pid": pid,
            "tid": tid, "ppid": ppid, "ns_pid": ns_pid, "ns_ppid": ns_ppid, "uid": uid, "gid": gid,
            "mntns": mntns, "pidns": pidns, "cgroup_id": cgroup_id, "comm": self._comm(comm), "exe": exe,
            "path": path, "ret": ret, "syscall": sysname,
            "parent_exe": self.procs.peek(ppid), "cwd": cwd, "flags": open_flags,
            "event_id": f"{self._prefix}{ktime}:{tid}", "extra": extra,
        }
