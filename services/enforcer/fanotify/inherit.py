"""Marks a fanotify group already holds when a new enforcer takes it over from the holder.

The kernel lists a group's marks in ``/proc/self/fdinfo/<group fd>``: inode marks with the inode,
its filesystem's device and a file handle, mount marks with the mount id. The new enforcer keeps the
ones its rules still want (with their masks, so bits no longer wanted are removed) and removes the
others after its own marks are in place, reopening an inode from its handle.
"""
from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Inherited", "read_marks", "open_inode", "open_mount"]

_INODE = re.compile(r"fanotify ino:([0-9a-f]+) sdev:([0-9a-f]+) mflags:[0-9a-f]+ mask:([0-9a-f]+)"
                    r".*?fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]+)")
_MOUNT = re.compile(r"fanotify mnt_id:([0-9a-f]+) mflags:[0-9a-f]+ mask:([0-9a-f]+)")
_MINORBITS = 20


@dataclass(frozen=True, slots=True)
class Inherited:
    """One inherited inode mark: its mask and how to reopen the inode."""

    mask: int
    handle_type: int
    handle: bytes


def read_marks(fan_fd: int) -> tuple[dict[tuple[int, int], Inherited], dict[int, int]]:
    """({(st_dev, st_ino): Inherited}, {mount id: mask}) of the group ``fan_fd``."""
    with open(f"/proc/self/fdinfo/{fan_fd}") as f:
        text = f.read()
    inodes: dict[tuple[int, int], Inherited] = {}
    mounts: dict[int, int] = {}
    for m in _INODE.finditer(text):
        sdev = int(m[2], 16)
        dev = os.makedev(sdev >> _MINORBITS, sdev & ((1 << _MINORBITS) - 1))
        inodes[(dev, int(m[1], 16))] = Inherited(int(m[3], 16), int(m[5], 16), bytes.fromhex(m[6]))
    for m in _MOUNT.finditer(text):
        mounts[int(m[1], 16)] = int(m[2], 16)
    return inodes, mounts


def _mount_point(pred: Callable[[list[str]], bool]) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if pred(fields):
                return fields[4].replace("\\040", " ")
    return None


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


def open_inode(dev: int, mark: Inherited) -> int | None:
    """An O_PATH fd of the inherited inode (through a mount of its filesystem), or None."""
    majmin = f"{os.major(dev)}:{os.minor(dev)}"
    where = _mount_point(lambda f: f[2] == majmin)
    if where is None or len(mark.handle) > 128:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    handle = _FileHandle(len(mark.handle), mark.handle_type)
    ctypes.memmove(handle.f_handle, mark.handle, len(mark.handle))
    try:
        mount_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # O_PATH: EBADF
    except OSError:
        return None
    try:
        fd = libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_PATH | os.O_CLOEXEC)
    finally:
        os.close(mount_fd)
    return fd if fd >= 0 else None


def open_mount(mount_id: int) -> int | None:
    """An O_PATH fd of the mount point of ``mount_id`` in our namespace, or None."""
    where = _mount_point(lambda f: f[0] == str(mount_id))
    if where is None:
        return None
    try:
        return os.open(where, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
