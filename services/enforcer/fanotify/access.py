"""What a thread waiting on a fanotify permission event asked for, read from /proc while it waits.

fanotify does not report the accessing open's flags (the event fd is opened with the group's own
``event_f_flags``; F_GETFL on it says nothing about the caller). But the caller is asleep inside its
open syscall until we answer, so ``/proc/<tid>/syscall`` shows that syscall and its arguments
(the group reports thread ids, FAN_REPORT_TID). From it:

- open / openat / creat / open_by_handle_at: the flags argument;
- openat2: the flags live in ``struct open_how`` in the caller's memory (read via /proc/<tid>/mem);
- execve / execveat / uselib: a read of the file for exec.

The event can be read before the caller has gone to sleep: /proc then says "running" for a moment,
and is read again until the thread sleeps (up to ``patience``). Anything else (io_uring workers, an
unknown architecture, a thread that vanished) is "unknown", which callers treat as a write for
read-only rules (the strongest choice), and count.
"""
from __future__ import annotations

import os
import platform
import time

__all__ = ["EXEC_LIKE", "exe_of", "exec_target", "fs_uid", "is_elf_interpreter", "open_access", "open_flags"]

O_ACCMODE, O_TRUNC = 0o3, 0o1000
EXEC_LIKE = -1  # open_flags of an execve-like call: the kernel reads the file for exec
# syscall number -> index of the flags argument; -1: exec-like (a read); "how": openat2
_OPENS: dict[str, dict[int, int | str]] = {
    "x86_64": {2: 1, 257: 2, 85: -2, 304: 2, 437: "how", 59: -1, 322: -1, 134: -1},
    "aarch64": {56: 2, 265: 2, 437: "how", 221: -1, 281: -1},
}


def _flags_access(flags: int) -> str:
    if (flags & O_ACCMODE) != os.O_RDONLY or flags & O_TRUNC:
        return "write"
    return "read"


def _blocked_syscall(tid: int, patience: float) -> list[bytes]:
    """The fields of ``/proc/<tid>/syscall`` once the thread sleeps in a syscall ([] when it is gone,
    or still running after ``patience`` s)."""
    give_up = time.monotonic() + patience
    while True:
        try:
            with open(f"/proc/{tid}/syscall", "rb") as f:
                fields = f.read().split()
        except OSError:
            return []
        if fields[:1] != [b"running"] or time.monotonic() >= give_up:
            return fields
        os.sched_yield()


def open_flags(tid: int, machine: str | None = None, patience: float = 0.005) -> int | None:
    """The open flags of the open thread ``tid`` is blocked in (creat(): O_CREAT|O_WRONLY|O_TRUNC);
    ``EXEC_LIKE`` for an execve-like call (a read); None when unknown."""
    table = _OPENS.get(machine or platform.machine(), {})
    try:
        fields = _blocked_syscall(tid, patience)
        nr = int(fields[0])
        args = [int(a, 16) for a in fields[1:7]]
    except (ValueError, IndexError):
        return None
    how = table.get(nr)
    if how is None:
        return None
    if how == -1:
        return EXEC_LIKE
    if how == -2:
        return os.O_CREAT | os.O_WRONLY | O_TRUNC
    if how == "how":
        try:
            fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            try:
                raw = os.pread(fd, 8, args[2])
            finally:
                os.close(fd)
            return int.from_bytes(raw, "little") if len(raw) == 8 else None
        except OSError:
            return None
    assert isinstance(how, int)
    return args[how]


def open_access(tid: int, machine: str | None = None, patience: float = 0.005) -> str:
    """``read``, ``write``, ``exec`` (the kernel opening a program, or its interpreter, for an execve the
    thread is in) or ``""`` (unknown) for the open thread ``tid`` is blocked in."""
    flags = open_flags(tid, machine, patience)
    if flags is None:
        return ""
    return "exec" if flags == EXEC_LIKE else _flags_access(flags)


_EXECS = {"x86_64": {59: 0, 322: 1}, "aarch64": {221: 0, 281: 1}}


def exec_target(tid: int, machine: str | None = None, patience: float = 0.005) -> tuple[int, int] | None:
    """(dev, ino) of the program the thread's execve names; None when not in an execve.

    Only stat and /proc reads: the reader thread must never open a file that could be marked.
    """
    table = _EXECS.get(machine or platform.machine(), {})
    try:
        fields = _blocked_syscall(tid, patience)
        nr, args = int(fields[0]), [int(a, 16) for a in fields[1:7]]
    except (ValueError, IndexError):
        return None
    which = table.get(nr)
    if which is None:
        return None
    try:
        fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.pread(fd, 4096, args[which])
        finally:
            os.close(fd)
        name = raw.split(b"\0", 1)[0].decode()
        dirfd = args[0] & 0xFFFFFFFF
        if name.startswith("/"):
            path = f"/proc/{tid}/root{name}"
        elif which == 1 and dirfd != 0xFFFFFF9C:  # execveat relative to a dirfd (or AT_EMPTY_PATH)
            path = f"/proc/{tid}/fd/{dirfd}/{name}" if name else f"/proc/{tid}/fd/{dirfd}"
        else:
            path = f"/proc/{tid}/cwd/{name}"
        st = os.stat(path)
    except (OSError, UnicodeDecodeError):
        return None
    return st.st_dev, st.st_ino


def is_elf_interpreter(fd: int) -> bool:
    """Whether the open file ``fd`` is an ELF object without PT_INTERP (ld.so, or a static program).

    Read through the event's own fd (no new open). The kernel opens such a file for an exec only as
    the program's ELF interpreter, or as a static program named by the execve itself.
    """
    try:
        head = os.pread(fd, 64, 0)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        end = "<" if head[5] == 1 else ">"
        phoff = int.from_bytes(head[32:40], "little" if end == "<" else "big")
        phentsize = int.from_bytes(head[54:56], "little" if end == "<" else "big")
        phnum = int.from_bytes(head[56:58], "little" if end == "<" else "big")
        table = os.pread(fd, phentsize * min(phnum, 128), phoff)
    except OSError:
        return False
    for i in range(0, len(table) - 3, phentsize or 56):
        if int.from_bytes(table[i:i + 4], "little" if end == "<" else "big") == 3:  # PT_INTERP
            return False
    return True


def fs_uid(tid: int) -> int:
    """The filesystem uid the thread accesses files as (``Uid:`` 4th field), -1 when unknown."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[4])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def exe_of(tid: int) -> str:
    """The thread's executable (for fromSource), "" when unknown."""
    try:
        return os.readlink(f"/proc/{tid}/exe")
    except OSError:
        return ""
