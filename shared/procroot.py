"""A workload's view of the file system from the node: one live pid per mount namespace, and paths
opened as that namespace's processes would resolve them (symlinks inside its root)."""
from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = ["pids_by_mntns", "open_in_root", "open_beneath", "open_in_pid_mntns"]

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
    root = os.open(f"/proc/{root_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_beneath(root, path, f"/proc/{root_pid}/root")
    finally:
        os.close(root)


def open_beneath(root_fd: int, path: str, where: str = "root") -> int:
    """An O_PATH fd for ``path`` resolved with ``root_fd`` as the root directory (absolute paths and
    symlinks stay inside it; no magic links); OSError (``where`` names the root) when it fails."""
    nr = _SYS_OPENAT2.get(platform.machine())
    if nr is None:
        raise OSError(38, "openat2 unknown on this architecture")
    how = struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    ret = _syscall().syscall(ctypes.c_long(nr), ctypes.c_int(root_fd), ctypes.c_char_p(os.fsencode(path)),
                             ctypes.c_char_p(how), ctypes.c_size_t(len(how)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2({path!r} in {where}): {os.strerror(err)}")
    return int(ret)


def open_in_pid_mntns(proc: str, pid: int, mntns: int, name: str, flags: int) -> int | None:
    """``name`` opened relative to ``proc/pid`` (``root``, ``root/etc/passwd``...) when process ``pid``
    still runs in mount namespace ``mntns``; None when it does not or the open fails. Its /proc
    directory, held open meanwhile, pins the process: a reused pid fails instead of answering."""
    try:
        pid_dir = os.open(f"{proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.stat("ns/mnt", dir_fd=pid_dir).st_ino != mntns:
            return None
        return os.open(name, flags | os.O_CLOEXEC, dir_fd=pid_dir)
    except OSError:
        return None
    finally:
        os.close(pid_dir)
