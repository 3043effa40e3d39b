"""Landlock for workloads Bulwark launches: a compiled exec allow-list applied before the command starts.

``bulwark run`` gets the workload's compiled rules in the enforcer's await reply; ``spec_for`` turns
them into a Landlock spec, and the command process applies it to itself just before exec
(``apply_spec``: no_new_privs, create ruleset, path-beneath rules, restrict_self). A denied exec fails
inline with EACCES, for the command and everything it starts, whatever happens to Bulwark later.

What Landlock can express here: an exec allow-list (a Process Allow rule list with the file posture
``block``): LANDLOCK_ACCESS_FS_EXECUTE is handled and allowed only beneath the allowed paths and
directories (plus each allowed program's ELF interpreter, which the kernel also opens for exec).

What it cannot (these stay with fanotify, which decides with the matcher):
- Block rules: Landlock has no deny rules, it only allows beneath paths; it can only restrict.
- non-recursive directories (matchDirectories without recursive): Landlock allows a whole subtree;
  such an allow-list is widened to the subtree (the fanotify decision still holds the line).
- fromSource: a Landlock domain covers the process tree, not a source executable. An allow-list
  with fromSource rules is not applied at all (applying it without them would deny what they allow).
- patterns, exec names; File allow-lists (reads of shared libraries, /proc, ... would need an
  allow-list of their own); audited workloads (``kubearmor-policy: audited``) are never restricted.
- rules cannot change after the command started (a domain can only be tightened).
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
from typing import Any

from shared.schemas.rules import Rule

__all__ = ["spec_for", "apply_spec", "abi_version", "ACCESS_EXECUTE", "elf_interpreter"]

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_CREATE_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
ACCESS_EXECUTE = 1 << 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    nrs = _SYS.get(platform.machine())
    if nrs is None:
        return 0
    ret = _libc().syscall(nrs[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_VERSION))
    return max(int(ret), 0)


def elf_interpreter(path: str) -> str:
    """The PT_INTERP of an ELF program ("" for scripts, static programs or unreadable files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return ""
            phoff = int.from_bytes(head[32:40], "little")
            phentsize, phnum = int.from_bytes(head[54:56], "little"), int.from_bytes(head[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * min(phnum, 128))
            for i in range(0, len(table), phentsize):
                if int.from_bytes(table[i:i + 4], "little") == 3:
                    off = int.from_bytes(table[i + 8:i + 16], "little")
                    size = int.from_bytes(table[i + 32:i + 40], "little")
                    f.seek(off)
                    return f.read(min(size, 4096)).split(b"\0", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def spec_for(rules: list[Rule], file_posture: str, audited: bool = False) -> dict[str, Any] | None:
    """The Landlock spec for a workload's compiled rules, or None when nothing is expressible."""
    allows = [r for r in rules if r.operation == "Process" and r.action == "Allow"]
    if audited or file_posture != "block" or not allows or any(r.from_source for r in allows):
        return None
    paths: list[str] = []
    for r in allows:
        if r.path:
            paths.append(r.path)
            interp = elf_interpreter(r.path)
            if interp:
                paths.append(interp)
        elif r.dir:
            paths.append(r.dir.rstrip("/") or "/")
    if not paths:
        return None
    return {"handled": ACCESS_EXECUTE, "allow": [[p, ACCESS_EXECUTE] for p in sorted(set(paths))]}


def apply_spec(spec: dict[str, Any]) -> int:
    """Restrict the calling process (and its future children); returns the number of rules added.

    Raises OSError when Landlock refuses; paths that do not exist are skipped (nothing is allowed there).
    """
    nrs = _SYS.get(platform.machine())
    if nrs is None:
        raise OSError(38, "Landlock syscalls unknown on this architecture")
    libc = _libc()
    attr = _RulesetAttr(int(spec["handled"]))
    rfd = libc.syscall(nrs[0], ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if rfd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    added = 0
    try:
        for path, access in spec["allow"]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                beneath = _PathBeneath(int(access), fd)
                if libc.syscall(nrs[1], rfd, _RULE_PATH_BENEATH, ctypes.byref(beneath), ctypes.c_uint32(0)) == 0:
                    added += 1
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
        if libc.syscall(nrs[2], rfd, ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(rfd)
    return added


def encode(spec: dict[str, Any] | None) -> bytes:
    """The spec as bytes for the sandbox gate ("" for none)."""
    return json.dumps(spec).encode() if spec else b""


def decode(raw: bytes) -> dict[str, Any] | None:
    """The inverse of ``encode``."""
    return json.loads(raw) if raw else None
