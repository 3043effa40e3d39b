"""shared/bpf/abi.py against bpf/include/events.h (constants, struct list) and the BTF comparison of the
self-check (on BTF written here the way a compiler would, agreeing and with one struct perturbed)."""
from __future__ import annotations

import ast
import ctypes
import operator
import re
import struct
from pathlib import Path

import pytest

from services.enforcer.reports.kernel import parse_record, to_raw_event
from services.monitor.selfcheck import BwSelfReport
from shared.bpf import abi
from shared.bpf.abicheck import compare_abi
from shared.bpf.btf import Btf
from shared.errors import DecodeError

REPO = Path(__file__).resolve().parents[2]
EVENTS_H = (REPO / "bpf/include/events.h").read_text()
_SIGNED = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)


class BtfWriter:
    """Raw BTF of ctypes structs as clang would emit it (ints, arrays, structs); ``swap`` replaces a
    struct by another one under its C name, to make the "compiled" side disagree."""

    def __init__(self, swap: dict[type, type] | None = None) -> None:
        self.types: list[bytes] = []
        self.strs = bytearray(b"\0")
        self.ids: dict[object, int] = {}
        self.swap = swap or {}

    def _str(self, s: str) -> int:
        off = len(self.strs)
        self.strs += s.encode() + b"\0"
        return off

    def _add(self, key: object, name: str, info: int, size_or_type: int, extra: bytes = b"") -> int:
        self.types.append(struct.pack("<III", self._str(name) if name else 0, info, size_or_type) + extra)
        self.ids[key] = len(self.types)
        return len(self.types)

    def type_of(self, ctype: type) -> int:
        ctype = self.swap.get(ctype, ctype)
        if ctype in self.ids:
            return self.ids[ctype]
        if issubclass(ctype, ctypes.Structure):
            return self.struct_of(ctype)
        if issubclass(ctype, ctypes.Array):
            elem, length = abi.array_of(ctype)
            index = self.type_of(ctypes.c_uint32)
            return self._add(ctype, "", 3 << 24, 0, struct.pack("<III", self.type_of(elem), index, length))
        size = ctypes.sizeof(ctype)
        enc = (1 if ctype in _SIGNED or ctype is ctypes.c_char else 0) << 24 | size * 8
        return self._add(ctype, ctype.__name__, 1 << 24, size, struct.pack("<I", enc))

    def struct_of(self, cls: type[ctypes.Structure]) -> int:
        self.types.append(b"")                     # its id first: members may refer to later ids
        tid = self.ids[cls] = len(self.types)
        fields = list(abi.members(cls))
        body = b"".join(struct.pack("<III", self._str(name), self.type_of(ctype), off * 8)
                        for name, ctype, off, _size in fields)
        self.types[tid - 1] = struct.pack("<III", self._str(getattr(cls, "C_NAME", cls.__name__)),
                                          4 << 24 | len(fields), ctypes.sizeof(cls)) + body
        return tid

    def btf(self, structs: tuple[type, ...]) -> Btf:
        for cls in structs:
            self.type_of(cls)
        types = b"".join(self.types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strs))
        return Btf(hdr + types + bytes(self.strs))


def _header_constants(text: str) -> dict[str, int]:
    """Every integer #define and enumerator of a C header (simple expressions of earlier names)."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.LShift: operator.lshift, ast.Mult: operator.mul}
    known: dict[str, int] = {}

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return int(ops[type(node.op)](value(node.left), value(node.right)))
        raise ValueError(ast.dump(node))

    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    for name, expr in re.findall(r"^#define (BW_\w+) (.+)$", text, re.M) + re.findall(
            r"^\t(BW_\w+) = (\d+),", text, re.M):
        known[name] = value(ast.parse(expr.strip(), mode="eval").body)
    return known


def test_every_constant_of_the_header_is_in_abi_with_its_value() -> None:
    consts = _header_constants(EVENTS_H)
    assert len(consts) > 40 and "BW_OP_ENF_LSM" in consts and "BW_LSM_PATH" in consts
    assert {name: getattr(abi, name, None) for name in consts} == consts
    ours = {name for name in vars(abi) if name.startswith("BW_")}
    assert ours == set(consts), "abi.py declares constants the header does not"


def test_every_struct_of_the_header_is_declared_once_and_anchored() -> None:
    structs = re.findall(r"^struct (bw_\w+) \{", EVENTS_H, re.M)
    assert sorted(structs) == sorted(cls.C_NAME for cls in abi.RECORDS)
    anchor = (REPO / "bpf/selfcheck/selfcheck.c").read_text().partition("struct bw_abi_anchor {")[2].split("};")[0]
    assert sorted(re.findall(r"struct (bw_\w+) \w+;", anchor)) == sorted(structs)
    assert "bw_enf_event" in structs and "bw_lsm_event" in structs


def test_records_start_with_the_common_header_and_decoders_keep_their_formats() -> None:
    for cls in abi.RECORDS:
        if cls.C_NAME.endswith("_event"):
            assert cls._fields_[0] == ("hdr", abi.BwEventHdr), cls.C_NAME
    assert abi.layout(abi.BwExecEvent, stop="exe").format == "<IIQ" + "I" * 10 + "iIIIQq16s512s"
    assert abi.layout(abi.BwPath).format == "<HHHH768s"
    head = abi.layout(abi.BwEnfEvent, stop="exe", skip=("task.pad", "enf.pad"))
    assert abi.layout(abi.BwLsmEvent, stop="res", skip=("task.pad", "enf.pad")).format == head.format
    assert abi.layout(abi.BwEventHdr, start="ktime").format == "<Q"


def test_agreeing_btf_passes_and_every_member_is_compared() -> None:
    structs = (*abi.RECORDS, BwSelfReport)
    check = compare_abi(BtfWriter().btf(structs), structs)
    assert check.problems == []
    assert sum(check.compared.values()) == abi.field_count(structs)
    assert check.compared["bw_lsm_event"] == abi.field_count((abi.BwLsmEvent,)) == 29


class _PathNoPad(abi.Record):
    C_NAME = "bw_path"
    _fields_ = [("len", ctypes.c_uint16), ("flags", ctypes.c_uint16), ("depth", ctypes.c_uint16),
                ("buf", ctypes.c_char * abi.BW_PATH_BUF)]


class _HdrShortSize(abi.Record):
    C_NAME = "bw_event_hdr"
    _fields_ = [("op", ctypes.c_uint32), ("size", ctypes.c_uint16), ("ktime", ctypes.c_uint64)]


class _EnfInfoMore(abi.Record):
    C_NAME = "bw_enf_info"
    _fields_ = [("kind", ctypes.c_uint32), ("rule_id", ctypes.c_uint32), ("args", ctypes.c_uint32 * 4),
                ("pad", ctypes.c_uint32), ("extra", ctypes.c_uint32)]


def test_a_perturbed_layout_is_reported_by_name() -> None:
    check = compare_abi(BtfWriter({abi.BwPath: _PathNoPad}).btf(abi.RECORDS), abi.RECORDS)
    assert "bw_path.pad: not in the compiled struct" in check.problems
    assert "bw_path.buf: offset BTF 6, abi.py 8" in check.problems
    assert "sizeof(struct bw_path): BTF 774, abi.py 776" in check.problems
    assert "bw_exec_event.cwd.buf: offset BTF 6, abi.py 8" in check.problems
    assert "bw_lsm_event.exe: size BTF 774, abi.py 776" in check.problems

    check = compare_abi(BtfWriter({abi.BwEventHdr: _HdrShortSize}).btf(abi.RECORDS), abi.RECORDS)
    assert "bw_sys_event.hdr.size: size BTF 2, abi.py 4" in check.problems

    check = compare_abi(BtfWriter({abi.BwEnfInfo: _EnfInfoMore}).btf(abi.RECORDS), abi.RECORDS)
    assert "bw_enf_event.enf.args: BTF 4 x 4 bytes, abi.py 3 x 4" in check.problems
    assert "bw_enf_event.enf.pad: offset BTF 24, abi.py 20" in check.problems
    assert "bw_enf_event.enf.extra: in the compiled struct, not in abi.py" in check.problems


def test_signedness_and_missing_structs_are_reported() -> None:
    class SysUnsigned(abi.Record):
        C_NAME = "bw_sys_event"
        _fields_ = [(n, ctypes.c_uint32 if n == "syscall" else t) for n, t in abi.BwSysEvent._fields_]

    check = compare_abi(BtfWriter({abi.BwSysEvent: SysUnsigned}).btf(abi.RECORDS), abi.RECORDS)
    assert check.problems == ["bw_sys_event.syscall: BTF unsigned, abi.py not"]
    check = compare_abi(BtfWriter().btf((abi.BwPath,)), (abi.BwPath, abi.BwLsmEvent))
    assert check.problems == ["struct bw_lsm_event: not in the compiled BTF"] and check.compared["bw_path"] == 5


def _kill(op: int = abi.BW_OP_ENF_SIGNAL, kind: int = abi.BW_ENF_CAP, args: tuple[int, int, int] = (13, 0, 0)) -> bytes:
    rec = abi.BwEnfEvent()
    rec.hdr.op, rec.hdr.size, rec.hdr.ktime = op, ctypes.sizeof(rec), 5
    rec.task.pid, rec.task.tid, rec.task.mntns, rec.task.comm = 10, 11, 4026532000, b"ping"
    rec.enf.kind, rec.enf.rule_id = kind, 3
    rec.enf.args[:] = args
    rec.exe.flags = abi.BW_PATH_COMPLETE                # an empty complete path: "/"
    return bytes(rec)


def test_kill_records_are_decoded_from_the_abi_layout() -> None:
    rec = parse_record(_kill(), {})
    assert (rec.ktime, rec.pid, rec.tid, rec.mntns, rec.comm, rec.kind, rec.rule_id, rec.args, rec.exe) == (
        5, 10, 11, 4026532000, "ping", abi.BW_ENF_CAP, 3, (13, 0, 0), "/")
    assert rec.resource == "CAP_NET_RAW"
    with pytest.raises(DecodeError, match="op 10"):
        parse_record(_kill(abi.BW_OP_ENF_LSM), {})
    with pytest.raises(DecodeError, match="bytes"):
        parse_record(_kill()[:-1], {})


def test_a_refused_socket_is_no_kill() -> None:
    killed = parse_record(_kill(kind=abi.BW_ENF_NET, args=(2, 3, 1)), {})
    refused = parse_record(_kill(kind=abi.BW_ENF_NET | abi.BW_ENF_REFUSED, args=(2, 3, 1)), {})
    assert killed.operation == refused.operation == "Network" and not killed.refused and refused.refused
    assert refused.resource == killed.resource == "domain=AF_INET type=SOCK_RAW protocol=1"
    ev_killed, ev_refused = (to_raw_event(r, "n", 0, "boot") for r in (killed, refused))
    assert (ev_killed.ret, ev_killed.extra["killed"], ev_killed.extra["result"]) == (0, True, "Killed (SIGKILL)")
    assert (ev_refused.ret, ev_refused.extra["killed"], ev_refused.extra["refused"], ev_refused.extra["result"]) == (
        -13, False, True, "Permission denied")
    assert ev_refused.syscall == "socket" and ev_refused.extra["enforcer"] == "eBPF Signal"
