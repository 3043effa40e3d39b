"""A workload's view of the file system from the node: one live pid per mount namespace, and paths
opened as that namespace's processes would resolve them (symlinks inside its root)."""
from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = ["pids_by_mntns", "open_in_root"]

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_RESOLVE_NO_MAGICLINKS, _RESOLVE_IN_ROOT = 0x02, 0x10

_libc: ctypes.CDLL | None = None


def _syscall() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def pids_by_mntns(wanted: set[int]) -> dict[int, int]:
    """One live pid per wanted mount namespace (a single /proc scan, stops when all are found)."""
    found: dict[int, int] = {}
    own = os.stat("/proc/self/ns/mnt").st_ino
    if own in wanted:
        found[own] = os.getpid()
    with os.scandir("/proc") as it:
        for entry in it:
            if len(found) == len(wanted):
                break
            if not entry.name.isdigit():
                continue
            try:
                ns = os.stat(f"/proc/{entry.name}/ns/mnt").st_ino
            except OSError:
                continue
            if ns in wanted and ns not in found:
                found[ns] = int(entry.name)
    return found


def open_in_root(path: str, root_pid: int | None) -> int:
    """An O_PATH fd for ``path`` as seen from ``root_pid``'s root directory (symlinks resolved inside
    that root, as the workload would resolve them), or from ours when ``root_pid`` is None."""
    if not root_pid or root_pid == os.getpid():
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    nr = _SYS_OPENAT2.get(platform.machine())
    if nr is None:
        raise OSError(38, "openat2 unknown on this architecture")
    root = os.open(f"/proc/{root_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        ret = _syscall().syscall(ctypes.c_long(nr), ctypes.c_int(root), ctypes.c_char_p(path.encode()),
                                 ctypes.c_char_p(how), ctypes.c_size_t(len(how)))
        if ret < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"openat2({path!r} in /proc/{root_pid}/root): {os.strerror(err)}")
        return int(ret)
    finally:
        os.close(root)
