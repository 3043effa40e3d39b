"""A minimal reader of BTF: struct members (offsets, types, sizes), arrays, ints and enum sizes.

Used to fix bpftool's C dump for bcc (1-byte enums), to check, before any program runs, that the
offsets bcc compiled agree with the running kernel's own type information, and to read the layout
of Bulwark's own records from the BTF of a loaded program (:mod:`shared.bpf.abicheck`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Btf", "BtfError", "Member", "TypeInfo", "VMLINUX_BTF"]

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, \
    _FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(1, 20)
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
# bytes that follow the 12-byte common type record: fixed, and per vlen entry
_FIXED_EXTRA = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}
_PER_VLEN = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _ENUM64: 12, _FUNC_PROTO: 8, _DATASEC: 12}
_KIND_NAMES = {_INT: "int", _PTR: "ptr", _ARRAY: "array", _STRUCT: "struct", _UNION: "union", _ENUM: "enum",
               _FWD: "fwd", _FUNC: "func", _FUNC_PROTO: "func_proto", _VAR: "var", _DATASEC: "datasec",
               _FLOAT: "float", _ENUM64: "enum"}
_INT_SIGNED = 1
_PTR_SIZE = 8


class BtfError(Exception):
    """The BTF blob is malformed or lacks a type/member asked for."""


@dataclass(slots=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: list[tuple[str, int, int]] = field(default_factory=list)  # (name, type id, bit offset)
    bitfields: list[int] = field(default_factory=list)  # per member: bitfield size (0: not a bitfield)
    extra: tuple[int, int] = (0, 0)  # array: (element type id, nelems); int: (encoding, bits)


@dataclass(frozen=True, slots=True)
class Member:
    """A struct/union member: name, type id, bit offset and bitfield size (0 when not a bitfield)."""

    name: str
    type_id: int
    bit_offset: int
    bitfield: int


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """A type with modifiers and typedefs resolved: kind name, name, size in bytes; for an int
    whether it is signed, for an array its element type id and count."""

    kind: str
    name: str
    size: int
    signed: bool = False
    elem: int = 0
    nelems: int = 0


class Btf:
    """Parsed BTF types with lookups by struct name."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise BtfError(f"bad BTF magic {magic:#x}")
        self._strs = data[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[_Type | None] = [None]
        self._structs: dict[tuple[int, str], int] = {}
        self._enums: dict[str, dict[str, int]] = {}
        self._parse(data, hdr_len + type_off, hdr_len + type_off + type_len)

    @classmethod
    def load(cls, path: Path = VMLINUX_BTF) -> Btf:
        """Read and parse a BTF file (the running kernel's by default)."""
        return cls(path.read_bytes())

    def _name(self, off: int) -> str:
        end = self._strs.index(b"\0", off)
        return self._strs[off:end].decode()

    def _parse(self, data: bytes, pos: int, end: int) -> None:
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            vlen, kind, kflag = info & 0xFFFF, (info >> 24) & 0x1F, info >> 31
            t = _Type(kind, self._name(name_off) if name_off else "", size_or_type)
            if kind in (_STRUCT, _UNION):
                for _ in range(vlen):
                    mname, mtype, moff = struct.unpack_from("<III", data, pos)
                    pos += 12
                    t.members.append((self._name(mname) if mname else "", mtype,
                                      moff & 0xFFFFFF if kflag else moff))
                    t.bitfields.append(moff >> 24 if kflag else 0)
                if t.name:
                    self._structs.setdefault((kind, t.name), len(self.types))
            elif kind == _ENUM and name_off:
                values = self._enums.setdefault(t.name, {})
                for _ in range(vlen):
                    ename, evalue = struct.unpack_from("<Ii", data, pos)
                    pos += 8
                    values[self._name(ename)] = evalue
            elif kind == _ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", data, pos)
                t.extra = (elem, nelems)
                pos += 12
            elif kind == _INT:
                (enc,) = struct.unpack_from("<I", data, pos)
                t.extra = ((enc >> 24) & 0xF, enc & 0xFF)
                pos += 4
            else:
                pos += _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen
            self.types.append(t)

    def _resolve(self, tid: int) -> _Type:
        t = self.types[tid]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        if t is None:
            raise BtfError(f"type id {tid} resolves to void")
        return t

    def _member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of ``name`` in a struct/union, looking inside anonymous members."""
        for mname, mtype, bitoff in self._resolve(tid).members:
            if mname == name:
                return bitoff, mtype
            if not mname:
                inner = self._member(mtype, name)
                if inner is not None:
                    return bitoff + inner[0], inner[1]
        return None

    def struct_id(self, name: str) -> int:
        """Type id of ``struct name`` (or ``union name``)."""
        tid = self._structs.get((_STRUCT, name)) or self._structs.get((_UNION, name))
        if tid is None:
            raise BtfError(f"no struct {name} in BTF")
        return tid

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of a (dotted) member path, e.g. ``offsetof("dentry", "d_name.name")``."""
        tid, bits = self.struct_id(struct_name), 0
        for part in path.split("."):
            found = self._member(tid, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path}")
            bits += found[0]
            tid = found[1]
        if bits % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield")
        return bits // 8

    def members(self, tid: int) -> list[Member]:
        """The members of struct/union type ``tid`` (modifiers resolved), in order."""
        t = self._resolve(tid)
        if t.kind not in (_STRUCT, _UNION):
            raise BtfError(f"type id {tid} is not a struct or union")
        return [Member(name, mtype, bitoff, bits)
                for (name, mtype, bitoff), bits in zip(t.members, t.bitfields, strict=True)]

    def type_info(self, tid: int) -> TypeInfo:
        """What type id ``tid`` is, modifiers and typedefs resolved."""
        t = self._resolve(tid)
        kind = _KIND_NAMES.get(t.kind, str(t.kind))
        if t.kind == _ARRAY:
            elem, nelems = t.extra
            return TypeInfo(kind, t.name, nelems * self.type_info(elem).size, elem=elem, nelems=nelems)
        if t.kind == _PTR:
            return TypeInfo(kind, t.name, _PTR_SIZE)
        if t.kind == _INT:
            return TypeInfo(kind, t.name, t.size_or_type, signed=bool(t.extra[0] & _INT_SIGNED))
        if t.kind in (_STRUCT, _UNION, _ENUM, _ENUM64, _FLOAT):
            return TypeInfo(kind, t.name, t.size_or_type)
        return TypeInfo(kind, t.name, 0)

    def sizeof(self, struct_name: str) -> int:
        """Size in bytes of ``struct name``."""
        return self._resolve(self.struct_id(struct_name)).size_or_type

    def enumerators(self, enum_name: str) -> dict[str, int]:
        """Name -> value of every enumerator of ``enum enum_name`` (empty when the kernel has no such enum)."""
        return dict(self._enums.get(enum_name, {}))

    def has_member(self, struct_name: str, path: str) -> bool:
        """Whether ``struct struct_name`` has the (dotted) member ``path``."""
        try:
            self.offsetof(struct_name, path)
        except BtfError:
            return False
        return True

    def enum_sizes(self) -> dict[str, int]:
        """Byte size of every named enum (bpftool 7.1 prints them all as 4-byte ones)."""
        return {t.name: t.size_or_type for t in self.types[1:]
                if t is not None and t.kind in (_ENUM, _ENUM64) and t.name}
