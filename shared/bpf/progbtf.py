"""The BTF a loaded BPF object carries, read back from the kernel through one of its maps.

bcc loads each program's BTF into the kernel; a map's info names that BTF (``btf_id``) and its value
type. bpf(2) by ctypes: BPF_OBJ_GET_INFO_BY_FD on the map, BPF_BTF_GET_FD_BY_ID, then
BPF_OBJ_GET_INFO_BY_FD on the BTF (asked once for its size, then for the raw blob).
"""
from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

from shared.bpf.btf import BtfError

__all__ = ["MapBtf", "map_btf"]

_NR_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_BTF_GET_FD_BY_ID = 19


class _InfoAttr(ctypes.Structure):
    """union bpf_attr for BPF_OBJ_GET_INFO_BY_FD (``info``)."""

    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _IdAttr(ctypes.Structure):
    """union bpf_attr for BPF_BTF_GET_FD_BY_ID."""

    _fields_ = [("btf_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _MapInfo(ctypes.Structure):
    """struct bpf_map_info up to btf_value_type_id (the kernel fills what both sides know)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _BtfInfo(ctypes.Structure):
    """struct bpf_btf_info."""

    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("name", ctypes.c_uint64), ("name_len", ctypes.c_uint32), ("kernel_btf", ctypes.c_uint32)]


@dataclass(frozen=True, slots=True)
class MapBtf:
    """What :func:`map_btf` found: the raw BTF blob and the map's value type id in it."""

    blob: bytes
    value_type_id: int


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise BtfError(f"bpf(2) number unknown on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    ret = int(libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                           ctypes.c_uint(ctypes.sizeof(attr))))
    if ret < 0:
        err = ctypes.get_errno()
        raise BtfError(f"bpf({cmd}): {os.strerror(err)}")
    return ret


def _info(fd: int, info: ctypes.Structure) -> None:
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))


def map_btf(map_fd: int) -> MapBtf:
    """The BTF blob of the object that created map ``map_fd``, and the map's value type id in it."""
    minfo = _MapInfo()
    _info(map_fd, minfo)
    if not minfo.btf_id:
        raise BtfError(f"map {minfo.name.decode(errors='replace')} has no BTF")
    btf_fd = _bpf(_BPF_BTF_GET_FD_BY_ID, _IdAttr(minfo.btf_id, 0, 0))
    try:
        binfo = _BtfInfo()
        _info(btf_fd, binfo)
        buf = ctypes.create_string_buffer(binfo.btf_size)
        binfo = _BtfInfo(btf=ctypes.addressof(buf), btf_size=binfo.btf_size)
        _info(btf_fd, binfo)
    finally:
        os.close(btf_fd)
    return MapBtf(buf.raw[:binfo.btf_size], minfo.btf_value_type_id)
