"""The one Python copy of the kernel <-> user contract, ``bpf/include/events.h``.

Op codes, flags, sizes and every record struct, declared once. The structs are ctypes structures (C
layout rules: offsets and sizes come for free); decoders derive their :class:`struct.Struct` formats
and offsets from them with :func:`layout` and keep ``unpack_from`` for speed. The monitor's start-up
self-check compares every member of every struct here with the BTF of the compiled header
(:mod:`shared.bpf.abicheck`), and a unit test compares the constants with the header's text.
"""
from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from ctypes import c_char, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64
from typing import ClassVar

__all__ = ["Record", "BwEventHdr", "BwPath", "BwTaskInfo", "BwExecEvent", "BwProcEvent", "BwSysEvent",
           "BwEnfInfo", "BwEnfEvent", "BwLsmEvent", "RECORDS", "layout", "offset", "members", "array_of", "field_count",
           "c_text", "BPF_RINGBUF_HDR_SZ"]

# enum bw_op: a record's hdr.op
BW_OP_EXEC = 1                  # struct bw_exec_event
BW_OP_PROC = 2                  # struct bw_proc_event
BW_OP_FORK = 3                  # struct bw_sys_event ...
BW_OP_EXIT = 4
BW_OP_FILE = 5
BW_OP_NET = 6
BW_OP_CAP = 7
BW_OP_SYSCALL = 8
BW_OP_ENF_SIGNAL = 9            # struct bw_enf_event
BW_OP_ENF_LSM = 10              # struct bw_lsm_event
BW_OP_PRESET = 11               # struct bw_sys_event: a preset's attack, seen by the monitor
BW_OP_ENF_PRESET = 12           # struct bw_lsm_event: an enforcer blocked a preset's attack

# visibility bits (bw_visibility values)
BW_VIS_PROCESS = 1
BW_VIS_FILE = 2
BW_VIS_NETWORK = 4
BW_VIS_CAPABILITIES = 8
BW_VIS_SYSCALL = 16
BW_VIS_PRESET_FILELESS = 128    # the presets' records (BW_OP_PRESET)
BW_VIS_PRESET_ENV = 256
BW_VIS_PRESET_ANON_EXEC = 512
BW_VIS_PRESET_ENTERED = 1024

# enum bw_preset: KubeArmor's policy presets (shared/presets.py)
BW_PRESET_FILELESS_EXEC = 1
BW_PRESET_PROTECT_ENV = 2
BW_PRESET_ANON_MAP_EXEC = 3
BW_PRESET_EXEC = 4

# BW_PRE_*: details of a preset's record (args[1]) and report (enf.args[0])
BW_PRE_MEMFD = 1
BW_PRE_MPROTECT = 2
BW_PRE_KILLED = 4

# enum bw_syscall: bw_exec_event.syscall
BW_SYS_EXECVE = 0
BW_SYS_EXECVEAT = 1

BW_COMM_LEN = 16
BW_TTY_LEN = 16
BW_FILENAME_LEN = 512
BW_ARGS_LEN = 256               # bytes of a process's command line kept (its argv)
BW_NAME_MAX = 256
BW_PATH_SPAN = 512
BW_PATH_BUF = BW_PATH_SPAN + BW_NAME_MAX
BW_PATH_DEPTH = 32
BW_PATH_ITERS = 40

# bw_path.flags
BW_PATH_COMPLETE = 1
BW_PATH_TRUNCATED = 2

# bw_proc_event.args_flags
BW_ARGS_TRUNCATED = 1
BW_ARGS_FAULT = 2

# bw_exec_event.flags
BW_EXEC_FILENAME_TRUNCATED = 1
BW_EXEC_FILENAME_FROM_KERNEL = 2

BW_SYS_NAME_LEN = 512
BW_SYS_AUX_LEN = 128
BW_MOUNT_SOURCE_LEN = 96        # a mount's aux: source[96], then fstype up to BW_SYS_AUX_LEN

# bw_sys_event.flags
BW_SYS_F_DIR_CWD = 1
BW_SYS_F_DIR_FD = 2
BW_SYS_F_NAME_FAULT = 4
BW_SYS_F_NAME_TRUNC = 8
BW_SYS_F_AUX_STR = 16
BW_SYS_F_SOCK = 32
BW_SYS_F_RETRY = 64
BW_SYS_F_OPEN = 128
BW_SYS_F_OWNER = 256
BW_SYS_F_DYING = 512

# bw_enf_info.kind of the signal enforcer
BW_ENF_NET = 1
BW_ENF_CAP = 2
BW_ENF_REFUSED = 0x100  # | BW_ENF_NET: the cgroup socket program refused it (EACCES), nothing was killed
# bw_enf_info.kind of the BPF-LSM enforcer: the kind in the low byte, the action in the next
BW_LSM_PROCESS = 1
BW_LSM_FILE = 2
BW_LSM_NETWORK = 3
BW_LSM_CAP = 4
BW_ACT_BLOCK = 1
BW_ACT_AUDIT = 2
BW_LSM_PATH = 248               # bw_lsm_event.res; also the path of the LSM's LPM keys

# the ring buffer's own header in front of every record: u32 len (busy, discard bits), u32 page offset
BPF_RINGBUF_HDR_SZ = 8


class Record(ctypes.LittleEndianStructure):
    """A struct of events.h; ``C_NAME`` is its name there."""

    C_NAME: ClassVar[str] = ""


class BwEventHdr(Record):
    """struct bw_event_hdr: what every record starts with."""

    C_NAME = "bw_event_hdr"
    _fields_ = [("op", c_uint32), ("size", c_uint32), ("ktime", c_uint64)]


class BwPath(Record):
    """struct bw_path: components leaf first, each NUL-terminated."""

    C_NAME = "bw_path"
    _fields_ = [("len", c_uint16), ("flags", c_uint16), ("depth", c_uint16), ("pad", c_uint16),
                ("buf", c_char * BW_PATH_BUF)]


class BwTaskInfo(Record):
    """struct bw_task_info: who did it."""

    C_NAME = "bw_task_info"
    _fields_ = [("pid", c_uint32), ("tid", c_uint32), ("ppid", c_uint32), ("ns_pid", c_uint32),
                ("ns_ppid", c_uint32), ("uid", c_uint32), ("gid", c_uint32), ("mntns", c_uint32),
                ("pidns", c_uint32), ("pad", c_uint32), ("cgroup_id", c_uint64), ("comm", c_char * BW_COMM_LEN)]


class BwExecEvent(Record):
    """struct bw_exec_event (BW_OP_EXEC)."""

    C_NAME = "bw_exec_event"
    _fields_ = [("hdr", BwEventHdr), ("pid", c_uint32), ("tid", c_uint32), ("ppid", c_uint32),
                ("ns_pid", c_uint32), ("ns_ppid", c_uint32), ("uid", c_uint32), ("gid", c_uint32),
                ("mntns", c_uint32), ("pidns", c_uint32), ("syscall", c_uint32), ("dirfd", c_int32),
                ("flags", c_uint32), ("at_flags", c_uint32), ("pad", c_uint32), ("cgroup_id", c_uint64),
                ("ret", c_int64), ("comm", c_char * BW_COMM_LEN), ("filename", c_char * BW_FILENAME_LEN),
                ("exe", BwPath), ("parent_exe", BwPath), ("cwd", BwPath), ("tty", c_char * BW_TTY_LEN)]


class BwProcEvent(Record):
    """struct bw_proc_event (BW_OP_PROC): a process's exe and command line, once per process."""

    C_NAME = "bw_proc_event"
    _fields_ = [("hdr", BwEventHdr), ("task", BwTaskInfo), ("exe", BwPath), ("tty", c_char * BW_TTY_LEN),
                ("args_len", c_uint16), ("args_flags", c_uint16), ("pad", c_uint32),
                ("args", c_char * BW_ARGS_LEN)]


class BwSysEvent(Record):
    """struct bw_sys_event: file, network, capability, fork/exit and syscall records."""

    C_NAME = "bw_sys_event"
    _fields_ = [("hdr", BwEventHdr), ("task", BwTaskInfo), ("ret", c_int64), ("args", c_int64 * 6),
                ("syscall", c_int32), ("flags", c_uint16), ("name_len", c_uint16), ("aux_len", c_uint16),
                ("pad", c_uint16 * 3), ("aux", c_uint8 * BW_SYS_AUX_LEN), ("name", c_char * BW_SYS_NAME_LEN),
                ("dir", BwPath)]


class BwEnfInfo(Record):
    """struct bw_enf_info: what an enforcement program judged, and by which rule."""

    C_NAME = "bw_enf_info"
    _fields_ = [("kind", c_uint32), ("rule_id", c_uint32), ("args", c_uint32 * 3), ("pad", c_uint32)]


class BwEnfEvent(Record):
    """struct bw_enf_event (BW_OP_ENF_SIGNAL): a process the signal enforcer killed."""

    C_NAME = "bw_enf_event"
    _fields_ = [("hdr", BwEventHdr), ("task", BwTaskInfo), ("enf", BwEnfInfo), ("exe", BwPath)]


class BwLsmEvent(Record):
    """struct bw_lsm_event (BW_OP_ENF_LSM): an operation BPF-LSM refused or audited."""

    C_NAME = "bw_lsm_event"
    _fields_ = [("hdr", BwEventHdr), ("task", BwTaskInfo), ("enf", BwEnfInfo), ("res", c_char * BW_LSM_PATH),
                ("exe", BwPath)]


# every struct of events.h (the self-check compares each, members recursively, with BTF)
RECORDS: tuple[type[Record], ...] = (BwEventHdr, BwPath, BwTaskInfo, BwEnfInfo, BwExecEvent, BwProcEvent,
                                     BwSysEvent, BwEnfEvent, BwLsmEvent)

_CODES: dict[type, str] = {c_uint8: "B", ctypes.c_int8: "b", c_uint16: "H", ctypes.c_int16: "h",
                           c_uint32: "I", c_int32: "i", c_uint64: "Q", c_int64: "q"}


def members(cls: type[ctypes.Structure]) -> Iterator[tuple[str, type, int, int]]:
    """(name, ctypes type, offset, size) of every direct member of ``cls``, in order."""
    for name, ctype, *_bits in cls._fields_:
        desc = getattr(cls, name)
        yield name, ctype, desc.offset, desc.size


def offset(cls: type[ctypes.Structure], path: str) -> int:
    """Byte offset of a (dotted) member path, e.g. ``offset(BwSysEvent, "task.mntns")``."""
    total, here = 0, cls
    for part in path.split("."):
        total += getattr(here, part).offset
        here = {name: ctype for name, ctype, *_ in here._fields_}[part]  # type: ignore[assignment]
    return total


def array_of(ctype: type) -> tuple[type, int]:
    """(element type, length) of a ctypes array type."""
    return vars(ctype)["_type_"], vars(ctype)["_length_"]


def field_count(structs: tuple[type[ctypes.Structure], ...] = RECORDS) -> int:
    """How many members ``structs`` declare, nested structs' members counted at each use."""
    total = 0
    for cls in structs:
        for _name, ctype, _off, _size in members(cls):
            total += 1
            if issubclass(ctype, ctypes.Structure):
                total += field_count((ctype,))
    return total


def _format(cls: type[ctypes.Structure], prefix: str, base: int, start: str | None, stop: str | None,
            skip: frozenset[str]) -> tuple[list[str], int]:
    """Format codes of ``cls``'s members from ``start`` up to (not including) ``stop``; (codes, end)."""
    out: list[str] = []
    pos = -1
    for name, ctype, off, size in members(cls):
        if name == stop:
            break
        if pos < 0:
            if start is not None and name != start:
                continue
            pos = base + off
        at = base + off
        if at > pos:
            out.append(f"{at - pos}x")
        path = prefix + name
        if path in skip:
            out.append(f"{size}x")
        elif issubclass(ctype, ctypes.Structure):
            out += _format(ctype, path + ".", at, None, None, skip)[0]
        elif issubclass(ctype, ctypes.Array):
            elem, length = array_of(ctype)
            code = "s" if elem in (c_char, c_uint8) else _CODES[elem]
            out.append(f"{length}{code}")
        else:
            out.append(_CODES[ctype])
        pos = at + size
    return out, pos


def layout(cls: type[ctypes.Structure], *, start: str | None = None, stop: str | None = None,
           skip: tuple[str, ...] = ()) -> struct.Struct:
    """A little-endian :class:`struct.Struct` of ``cls``'s members from ``start`` up to ``stop``
    (nested structs flattened; char and u8 arrays as one bytes value; members named in ``skip``,
    dotted, as padding). Unpack it at ``offset(cls, start)`` when a start is given."""
    codes, end = _format(cls, "", 0, start, stop, frozenset(skip))
    fmt = struct.Struct("<" + "".join(codes))
    first = offset(cls, start) if start else 0
    if fmt.size != end - first:
        raise ValueError(f"{cls.__name__}: format {fmt.format} is {fmt.size} bytes, members {end - first}")
    return fmt


def c_text(raw: bytes) -> str:
    """A C string (char array) as text: up to the first NUL, undecodable bytes escaped."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
