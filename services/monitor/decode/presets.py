"""A preset's record (BW_OP_PRESET, see the args table in bpf/include/events.h) as RawEvent fields.

Pure: the record decoder (:mod:`services.monitor.decode.records`) unpacks the struct and passes the
numbers and strings here; this says what they mean per preset (shared.presets): the resource (a
memfd's name, a file's or program's path, nothing for a mapping) and the details in ``extra``.
"""
from __future__ import annotations

from typing import Any

from shared.bpf.abi import (
    BW_PRE_MEMFD,
    BW_PRE_MPROTECT,
    BW_PRESET_ANON_MAP_EXEC,
    BW_PRESET_EXEC,
    BW_PRESET_FILELESS_EXEC,
    BW_PRESET_PROTECT_ENV,
)
from shared.bpf.names import map_flags_text, prot_text
from shared.errors import DecodeError
from shared.presets import BY_KERNEL_ID

__all__ = ["preset_fields"]


def preset_fields(args: tuple[int, ...], name: str, aux: str, dir_path: str, exe: str,
                  ret: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(resource, exe, extra) of a preset record: ``args`` its six args, ``name``/``aux`` its strings,
    ``dir_path`` its decoded path, ``exe`` the process's cached executable, ``ret`` the syscall's
    result (an mmap's: the mapping's address)."""
    kernel_id, pre = args[0], args[1]
    info = BY_KERNEL_ID.get(kernel_id)
    if info is None:
        raise DecodeError(f"preset record of unknown preset {kernel_id}")
    extra: dict[str, Any] = {"preset": info.name}
    if kernel_id == BW_PRESET_FILELESS_EXEC:
        memfd = bool(pre & BW_PRE_MEMFD)
        extra["memfd"] = memfd
        if aux:
            extra["filename"] = aux
        if memfd:  # its path walk ends at once (no directory): what /proc/<pid>/exe says instead
            return name, f"/{name} (deleted)", extra
        return dir_path or name, exe, extra
    if kernel_id == BW_PRESET_PROTECT_ENV:
        extra["target_pid"], extra["fd"] = args[2], args[3]
        return dir_path, exe, extra
    if kernel_id == BW_PRESET_ANON_MAP_EXEC:
        extra["prot"] = prot_text(args[2])
        addr = args[4]
        if not pre & BW_PRE_MPROTECT:
            extra["map_flags"], addr = map_flags_text(args[3]), ret
        extra["addr"], extra["len"] = hex(addr & 0xFFFFFFFFFFFFFFFF), args[5]
        return "", exe, extra
    if kernel_id == BW_PRESET_EXEC:
        if name:
            extra["filename"] = name
        extra["parent_pid"] = args[2]
        if aux:
            extra["parent_comm"] = aux
        return dir_path or name, exe, extra
    raise DecodeError(f"preset record of unknown preset {kernel_id}")  # pragma: no cover - BY_KERNEL_ID
