"""Compare :mod:`shared.bpf.abi` with the BTF of the compiled header: every member of every struct.

The model is Tetragon's alignchecker: the compiler's own type information of the structs the programs
write (read back from the kernel, see :mod:`shared.bpf.progbtf`) is compared, member by member and
recursively (name, offset, size, element count, signedness), with the Python copy the decoders use.
Pure: the monitor's self-check and a unit test (with a synthetic mismatch) call the same function.
"""
from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.bpf.abi import Record, array_of, members
from shared.bpf.btf import Btf, BtfError

__all__ = ["AbiCheck", "compare_abi"]

_SIGNED = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)


@dataclass(slots=True)
class AbiCheck:
    """Every disagreement found, and how many members of each struct (by C name) were compared."""

    problems: list[str] = field(default_factory=list)
    compared: dict[str, int] = field(default_factory=dict)


def _kind_problem(btf: Btf, tid: int, ctype: type, where: str) -> str | None:
    """Why member type ``tid`` is not what ``ctype`` declares (None when it is); sizes checked apart."""
    info = btf.type_info(tid)
    if issubclass(ctype, ctypes.Structure):
        want = getattr(ctype, "C_NAME", ctype.__name__)
        if info.kind != "struct" or info.name != want:
            return f"{where}: BTF has {info.kind} {info.name}, abi.py struct {want}"
    elif issubclass(ctype, ctypes.Array):
        elem, length = array_of(ctype)
        if info.kind != "array":
            return f"{where}: BTF has {info.kind} {info.name}, abi.py an array"
        if info.nelems != length or btf.type_info(info.elem).size != ctypes.sizeof(elem):
            return (f"{where}: BTF {info.nelems} x {btf.type_info(info.elem).size} bytes, "
                    f"abi.py {length} x {ctypes.sizeof(elem)}")
    elif info.kind != "int":
        return f"{where}: BTF has {info.kind} {info.name}, abi.py an integer"
    elif info.signed != (ctype in _SIGNED):
        return f"{where}: BTF {'signed' if info.signed else 'unsigned'}, abi.py not"
    return None


def _compare(btf: Btf, tid: int, cls: type[ctypes.Structure], where: str, out: list[str]) -> int:
    """Compare the members of struct ``tid`` with ``cls``'s, recursively; returns how many were compared."""
    theirs = {m.name: m for m in btf.members(tid)}
    count = 0
    for name, ctype, off, size in members(cls):
        path = f"{where}.{name}"
        m = theirs.pop(name, None)
        if m is None:
            out.append(f"{path}: not in the compiled struct")
            continue
        count += 1
        got_size = btf.type_info(m.type_id).size
        if m.bitfield or m.bit_offset % 8:
            out.append(f"{path}: a bitfield in BTF")
        elif m.bit_offset // 8 != off:
            out.append(f"{path}: offset BTF {m.bit_offset // 8}, abi.py {off}")
        if got_size != size:
            out.append(f"{path}: size BTF {got_size}, abi.py {size}")
        kind = _kind_problem(btf, m.type_id, ctype, path)
        if kind:
            out.append(kind)
        elif issubclass(ctype, ctypes.Structure):
            count += _compare(btf, m.type_id, ctype, path, out)
    out.extend(f"{where}.{name}: in the compiled struct, not in abi.py" for name in theirs)
    return count


def compare_abi(btf: Btf, structs: Iterable[type[Record]]) -> AbiCheck:
    """Every disagreement between ``structs`` and the same-named structs of ``btf``."""
    check = AbiCheck()
    for cls in structs:
        name = cls.C_NAME
        try:
            tid = btf.struct_id(name)
        except BtfError:
            check.problems.append(f"struct {name}: not in the compiled BTF")
            check.compared[name] = 0
            continue
        size = btf.type_info(tid).size
        if size != ctypes.sizeof(cls):
            check.problems.append(f"sizeof(struct {name}): BTF {size}, abi.py {ctypes.sizeof(cls)}")
        check.compared[name] = _compare(btf, tid, cls, name, check.problems)
    return check
