"""Stateful decoding of every ring-buffer record into RawEvent wire maps (plain dicts, for speed).

Process records (BW_OP_PROC) carry a process's exe and command line once; they fill :class:`ProcCache`
and produce no event. Every other record becomes one map with the fields of
:class:`shared.schemas.events.RawEvent` (same keys, same order), ``proc_args`` the acting process's
arguments from that cache; a preset's record (BW_OP_PRESET) is kind ``preset``
(:mod:`services.monitor.decode.presets`). An exec record gets its program file's owner (``extra
owner_uid``) while ``exec_owners`` is on (an ownerOnly rule exists), and the path its symlinks lead to
(``extra real_path``, only when it differs from the path asked for) while ``exec_real_paths`` is on (a
Process rule names a path): :mod:`services.monitor.decode.workload_files`.
Layouts come from :mod:`shared.bpf.abi`.
"""
from __future__ import annotations

import ctypes
import os
import posixpath
import struct
from collections.abc import Callable
from typing import Any

from services.monitor.decode import exec_record as exec_decoder
from services.monitor.decode.exec_record import HEADER, DecodeContext
from services.monitor.decode.kinds import KIND_OF_OP, describe
from services.monitor.decode.presets import preset_fields
from services.monitor.decode.syscall_table import SYSCALL_NUMBERS, syscall_name
from services.monitor.decode.users import UserNames
from services.monitor.decode.workload_files import WorkloadFiles
from shared.bpf.abi import (
    BPF_RINGBUF_HDR_SZ,
    BW_ARGS_LEN,
    BW_OP_EXEC,
    BW_OP_EXIT,
    BW_OP_PRESET,
    BW_OP_PROC,
    BW_SYS_F_DIR_CWD,
    BW_SYS_F_DIR_FD,
    BW_SYS_F_DYING,
    BW_SYS_F_NAME_FAULT,
    BW_SYS_F_NAME_TRUNC,
    BW_TTY_LEN,
    BwEventHdr,
    BwProcEvent,
    BwSysEvent,
    c_text,
    layout,
    offset,
)
from shared.bpf.paths import PATH_SIZE, decode_path
from shared.errors import DecodeError

__all__ = ["RecordDecoder", "ProcCache", "SYS_HEAD", "SYS_SIZE", "PROC_SIZE", "command_args"]

# struct bw_proc_event up to its exe: hdr, task
_TASK = layout(BwProcEvent, stop="exe")
# struct bw_sys_event up to aux: hdr, task, ret, args[6], syscall, flags, name_len, aux_len (pad skipped)
SYS_HEAD = layout(BwSysEvent, stop="aux", skip=("pad",))
_AUX_OFF, _NAME_OFF, _DIR_OFF = (offset(BwSysEvent, name) for name in ("aux", "name", "dir"))
SYS_SIZE = ctypes.sizeof(BwSysEvent)
PROC_SIZE = ctypes.sizeof(BwProcEvent)
_PROC_PID = 3                     # index of task.pid in _TASK's values
_PROC_EXE = offset(BwProcEvent, "exe")
_PROC_TTY = offset(BwProcEvent, "tty")
_PROC_ARGS_LEN = struct.Struct("<H")
_PROC_ARGS_LEN_OFF = offset(BwProcEvent, "args_len")
_PROC_ARGS = offset(BwProcEvent, "args")


# a record's event: buf[at:at + size] -> wire map, or None (process records)
Handler = Callable[[bytes, int, int], "dict[str, Any] | None"]
# the ring buffer's own header (len, page offset) then struct bw_event_hdr (op, size, ktime)
_FRAME = struct.Struct("<II" + HEADER.format.lstrip("<"))
_SYSCALL_NAMES: dict[int, str] = {nr: name for name, nr in SYSCALL_NUMBERS.items()}
_KTIME = layout(BwEventHdr, start="ktime")
_KTIME_OFF = offset(BwEventHdr, "ktime")
_SAME_LIMIT = 4096  # records remembered for decoding their repeats
_SAME_BYPASS = 65536  # records decoded in full, without looking, when repeats were rare


def command_args(raw: bytes) -> str:
    """The arguments after argv[0] of a command line as the kernel keeps it (each NUL-ended; the last
    one cut when it did not fit), space-joined as KubeArmor joins them; "" when there are none."""
    parts = raw.split(b"\0")
    if parts and not parts[-1]:
        parts.pop()
    return " ".join(p.decode("utf-8", "replace") for p in parts[1:])


def _proc_args(tgid: int) -> str:
    """The arguments of ``tgid`` from /proc/<tgid>/cmdline (as much as a process record holds), or ""."""
    try:
        with open(f"/proc/{tgid}/cmdline", "rb") as f:
            return command_args(f.read(BW_ARGS_LEN))
    except OSError:
        return ""


def _remember(table: dict[int, str], limit: int, tgid: int, value: str) -> None:
    """Set (or, for "", drop) ``tgid``'s entry; the oldest entry goes beyond ``limit``."""
    if not value:
        table.pop(tgid, None)
        return
    table[tgid] = value
    if len(table) > limit:
        del table[next(iter(table))]


class ProcCache:
    """tgid -> canonical exe (and controlling tty, command-line arguments), from process records;
    /proc/<tgid>/exe when a record was missed."""

    def __init__(self, limit: int = 131072) -> None:
        self.limit = limit
        self._exe: dict[int, str] = {}
        self._tty: dict[int, str] = {}  # only processes that have one
        self._args: dict[int, str] = {}  # only processes that have some
        self.misses = 0
        self.records = 0

    def put(self, tgid: int, exe: str, tty: str = "", args: str = "") -> None:
        """Remember ``tgid``'s exe, tty and arguments (the newest record wins)."""
        self.records += 1
        self._exe.pop(tgid, None)
        self._exe[tgid] = exe
        if len(self._exe) > self.limit:
            del self._exe[next(iter(self._exe))]
        _remember(self._tty, self.limit, tgid, tty)
        _remember(self._args, self.limit, tgid, args)

    def args(self, tgid: int) -> str:
        """The arguments of ``tgid`` (after argv[0]) as its process record said, or ""."""
        return self._args.get(tgid, "")

    def tty(self, tgid: int) -> str:
        """The controlling tty of ``tgid`` as its process record said, or ""."""
        return self._tty.get(tgid, "")

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
        _remember(self._args, self.limit, tgid, _proc_args(tgid))
        return exe

    def peek(self, tgid: int) -> str:
        """The cached exe of ``tgid``, or "" (no /proc fallback)."""
        return self._exe.get(tgid, "")

    def forget(self, tgid: int) -> None:
        """Drop ``tgid`` (its process exited)."""
        self._exe.pop(tgid, None)
        self._tty.pop(tgid, None)
        self._args.pop(tgid, None)


class RecordDecoder:
    """Bytes from the ring buffer -> RawEvent maps (or None for process records).

    Handlers decode the record at ``buf[at:at + size]`` in place: a chunk copied out of the ring
    buffer is decoded without a copy per record.
    """

    def __init__(self, ctx: DecodeContext, procs: ProcCache | None = None, users: UserNames | None = None,
                 files: WorkloadFiles | None = None) -> None:
        self.ctx = ctx
        self.procs = procs or ProcCache()
        self.users = users  # None: events carry no user names
        self.files = files or WorkloadFiles()
        self.exec_owners = True  # read the owner of exec'd files (off while no ownerOnly rule exists)
        self.exec_real_paths = True  # resolve exec'd paths' symlinks (off while no Process rule names a path)
        self._prefix = f"{ctx.node}:{ctx.boot_id}:"
        self._comms: dict[bytes, str] = {}
        self._names: dict[bytes, str] = {}
        self._same: dict[bytes, dict[str, Any]] = {}
        self._same_hits = 0
        self._same_bypass = 0
        self._handlers: dict[int, Handler] = {BW_OP_EXEC: self._exec, BW_OP_PROC: self._proc,
                                              BW_OP_PRESET: self._preset}
        for op in KIND_OF_OP:
            self._handlers[op] = self._sys

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """Decode one record; DecodeError when it is short, unknown or inconsistent."""
        if len(data) < HEADER.size:
            raise DecodeError(f"record of {len(data)} bytes is shorter than the header")
        op, size, _ktime = HEADER.unpack_from(data, 0)
        return self._handler(op, size, len(data))(data, 0, size)

    def feed_chunk(self, chunk: bytes, offsets: list[int]) -> tuple[list[dict[str, Any]], list[DecodeError]]:
        """Decode every record of a :meth:`RingBuffer.take` chunk: (events, one error per bad record).

        A record that fails for any reason is an error here (counted by the caller), never lost silently.
        """
        events: list[dict[str, Any]] = []
        errors: list[DecodeError] = []
        append, frame, handlers = events.append, _FRAME.unpack_from, self._handlers
        for off in offsets:
            try:
                length, _page, op, size, _ktime = frame(chunk, off)
                handler = handlers.get(op)
                if handler is None or size > length or length < HEADER.size:
                    handler = self._handler(op, size, length)
                event = handler(chunk, off + BPF_RINGBUF_HDR_SZ, size)
            except DecodeError as exc:
                errors.append(exc)
                continue
            except Exception as exc:  # a decoder bug must not lose the record silently either
                errors.append(DecodeError(f"record at {off}: {exc!r}"))
                continue
            if event is not None:
                append(event)
        return events, errors

    def _handler(self, op: int, size: int, length: int) -> Handler:
        """The handler of ``op`` for a record of ``length`` bytes claiming ``size``; DecodeError if none."""
        if length < HEADER.size:
            raise DecodeError(f"record of {length} bytes is shorter than the header")
        handler = self._handlers.get(op)
        if handler is None:
            raise DecodeError(f"unknown op code {op}")
        if size > length:
            raise DecodeError(f"op {op}: header size {size} exceeds the record ({length} bytes)")
        return handler

    def _exec(self, buf: bytes, at: int, size: int) -> dict[str, Any]:
        event = exec_decoder.decode(buf[at:at + size], self.ctx).to_wire()
        pids = (event["pid"], event["ppid"])
        if self.users is not None:
            user = self.users.name(event["mntns"], event["cgroup_id"], event["uid"], pids)
            if user:
                event["extra"]["user"] = user
        if self.exec_owners:
            owner = self.files.owner(event["mntns"], event["path"], pids)
            if owner >= 0:
                event["extra"]["owner_uid"] = owner
        if self.exec_real_paths:
            real = self.files.real_path(event["mntns"], event["path"], pids)
            if real and real != event["path"]:
                event["extra"]["real_path"] = real
        return event

    def _who(self, extra: dict[str, Any], pid: int, ppid: int, mntns: int, cgroup_id: int, uid: int) -> None:
        """The process's controlling tty and its user's name, into ``extra`` when known."""
        tty = self.procs.tty(pid)
        if tty:
            extra["tty"] = tty
        if self.users is not None:
            user = self.users.name(mntns, cgroup_id, uid, (pid, ppid))
            if user:
                extra["user"] = user

    def _proc(self, buf: bytes, at: int, size: int) -> None:
        if size != PROC_SIZE:
            raise DecodeError(f"process record is {size} bytes, expected {PROC_SIZE}")
        pid = _TASK.unpack_from(buf, at)[_PROC_PID]
        exe = decode_path(buf[at + _PROC_EXE:at + _PROC_EXE + PATH_SIZE])[0]
        args_len = min(_PROC_ARGS_LEN.unpack_from(buf, at + _PROC_ARGS_LEN_OFF)[0], BW_ARGS_LEN)
        args = command_args(bytes(buf[at + _PROC_ARGS:at + _PROC_ARGS + args_len])) if args_len else ""
        self.procs.put(pid, exe, c_text(buf[at + _PROC_TTY:at + _PROC_TTY + BW_TTY_LEN]), args)
        return None

    def _comm(self, raw: bytes) -> str:
        comm = self._comms.get(raw)
        if comm is None:
            if len(self._comms) > 4096:
                self._comms.clear()
            comm = self._comms[raw] = c_text(raw)
        return comm

    def _name(self, raw: bytes) -> str:
        name = self._names.get(raw)
        if name is None:
            if len(self._names) > 4096:
                self._names.clear()
            name = self._names[raw] = c_text(raw)
        return name

    def _preset(self, buf: bytes, at: int, size: int) -> dict[str, Any]:
        """A preset's record: always decoded in full (rare, and its strings differ per preset)."""
        if size < _NAME_OFF:
            raise DecodeError(f"preset record is {size} bytes, shorter than {_NAME_OFF}")
        (_op, _size, ktime, pid, tid, ppid, ns_pid, ns_ppid, uid, gid, mntns, pidns, _pad, cgroup_id,
         comm, ret, a0, a1, a2, a3, a4, a5, nr, flags, name_len, aux_len) = SYS_HEAD.unpack_from(buf, at)
        if _NAME_OFF + name_len > min(size, _DIR_OFF) or aux_len > _NAME_OFF - _AUX_OFF:
            raise DecodeError(f"preset record: name {name_len} / aux {aux_len} bytes overrun it")
        if flags & BW_SYS_F_DIR_FD and size != SYS_SIZE:
            raise DecodeError(f"preset record with a path is {size} bytes, expected {SYS_SIZE}")
        name = c_text(buf[at + _NAME_OFF:at + _NAME_OFF + name_len])
        aux = c_text(buf[at + _AUX_OFF:at + _AUX_OFF + aux_len])
        dir_path = decode_path(buf[at + _DIR_OFF:at + SYS_SIZE])[0] if flags & BW_SYS_F_DIR_FD else ""
        path, exe, extra = preset_fields((a0, a1, a2, a3, a4, a5), name, aux, dir_path, self.procs.get(pid),
                                       ret)
        if flags & BW_SYS_F_DYING:
            extra["dying"] = True         # killed at the hook (the signal enforcer's report is the alert)
        self._who(extra, pid, ppid, mntns, cgroup_id, uid)
        sysname = _SYSCALL_NAMES.get(nr) or syscall_name(nr) if nr >= 0 else ""
        return {
            "kind": "preset", "ts_ns": self.ctx.boot_offset_ns + ktime, "node": self.ctx.node,
            "pid": pid, "tid": tid, "ppid": ppid, "ns_pid": ns_pid, "ns_ppid": ns_ppid, "uid": uid,
            "gid": gid, "mntns": mntns, "pidns": pidns, "cgroup_id": cgroup_id, "comm": self._comm(comm),
            "exe": exe, "path": path, "ret": ret, "syscall": sysname, "parent_exe": self.procs.peek(ppid),
            "cwd": "", "flags": 0, "event_id": f"{self._prefix}{ktime}:{tid}", "extra": extra,
            "proc_args": self.procs.args(pid),
        }

    def _sys(self, buf: bytes, at: int, size: int) -> dict[str, Any]:
        """A record the same as an earlier one but for its time (a thread repeating a syscall) is
        decoded from that one's event while the process cache still gives its exe and parent's; the
        rest in full. Exits always in full (they change state)."""
        if self._same_bypass:
            self._same_bypass -= 1
            return self._sys_full(buf, at, size)
        key = buf[at + HEADER.size:at + size]
        same = self._same.get(key)
        if same is not None and (self.procs.peek(same["pid"]) != same["exe"]
                                 or self.procs.peek(same["ppid"]) != same["parent_exe"]
                                 or self.procs.args(same["pid"]) != same["proc_args"]):
            same = None                   # an exec, an exit or a late process record since
        if same is None:
            event = self._sys_full(buf, at, size)
            if event["kind"] != "exit":
                if len(self._same) >= _SAME_LIMIT:
                    self._forget_same()
                self._same[key] = event
            return event
        self._same_hits += 1
        ktime = _KTIME.unpack_from(buf, at + _KTIME_OFF)[0]
        event = same.copy()
        event["ts_ns"] = self.ctx.boot_offset_ns + ktime
        event["event_id"] = f"{self._prefix}{ktime}:{same['tid']}"
        event["extra"] = same["extra"].copy()
        return event

    def _forget_same(self) -> None:
        """The remembered records are full: start again, or stop looking for a while when fewer
        than half of the records decoded since were repeats (the lookup would cost more than it saves)."""
        if self._same_hits < _SAME_LIMIT:
            self._same_bypass = _SAME_BYPASS
        self._same.clear()
        self._same_hits = 0

    def _sys_full(self, buf: bytes, at: int, size: int) -> dict[str, Any]:
        if size < _NAME_OFF:
            raise DecodeError(f"record is {size} bytes, shorter than {_NAME_OFF}")
        (op, _size, ktime, pid, tid, ppid, ns_pid, ns_ppid, uid, gid, mntns, pidns, _pad, cgroup_id,
         comm, ret, a0, a1, a2, a3, a4, a5, nr, flags, name_len, aux_len) = SYS_HEAD.unpack_from(buf, at)
        name = ""
        if name_len:
            if _NAME_OFF + name_len > size:
                raise DecodeError(f"name of {name_len} bytes overruns the record")
            raw = buf[at + _NAME_OFF:at + _NAME_OFF + name_len]
            name = self._names.get(raw) or self._name(raw)
        extra: dict[str, Any] = {}
        cwd = ""
        path = name
        if flags & (BW_SYS_F_DIR_CWD | BW_SYS_F_DIR_FD):
            if size < SYS_SIZE:
                raise DecodeError(f"record with a dir is {size} bytes, expected {SYS_SIZE}")
            base, cut = decode_path(buf[at + _DIR_OFF:at + SYS_SIZE])
            if flags & BW_SYS_F_DIR_CWD:
                cwd = base
            if cut:
                extra["truncated"] = ["dir"]
            if base.startswith("/"):
                path = posixpath.normpath(posixpath.join(base, name)) if name else base
                if name:
                    extra["filename"] = name
        if flags & BW_SYS_F_NAME_FAULT:
            extra["name_fault"] = True
        if flags & BW_SYS_F_NAME_TRUNC:
            extra["name_truncated"] = True
        if flags & BW_SYS_F_DYING and op != BW_OP_EXIT:
            extra["dying"] = True         # killed on its way back to user space (the signal enforcer)
        procs = self.procs
        exe = procs.get(pid)
        args = procs.args(pid)
        self._who(extra, pid, ppid, mntns, cgroup_id, uid)
        if op == BW_OP_EXIT:              # the process is gone after this record
            procs.forget(pid)
        aux = buf[at + _AUX_OFF:at + _AUX_OFF + aux_len] if aux_len else b""
        sysname = _SYSCALL_NAMES.get(nr) or syscall_name(nr) if nr >= 0 else ""
        path, open_flags = describe(op, sysname, flags, (a0, a1, a2, a3, a4, a5), ret, path, aux, exe, extra)
        return {
            "kind": KIND_OF_OP[op], "ts_ns": self.ctx.boot_offset_ns + ktime, "node": self.ctx.node,
            "pid": pid, "tid": tid, "ppid": ppid, "ns_pid": ns_pid, "ns_ppid": ns_ppid, "uid": uid,
            "gid": gid, "mntns": mntns, "pidns": pidns, "cgroup_id": cgroup_id,
            "comm": self._comms.get(comm) or self._comm(comm), "exe": exe, "path": path, "ret": ret,
            "syscall": sysname, "parent_exe": procs.peek(ppid), "cwd": cwd, "flags": open_flags,
            "event_id": f"{self._prefix}{ktime}:{tid}", "extra": extra, "proc_args": args,
        }
