"""Attaching a cgroup BPF program with a BPF link (``BPF_LINK_CREATE``), so the attachment lives exactly as
long as the link's fd: closing the last copy (ours and a holder's) detaches it. A legacy ``BPF_PROG_ATTACH``
would outlive the process and keep acting with stale rules after a crash.
"""
from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

__all__ = ["BPF_CGROUP_INET_SOCK_CREATE", "cgroup2_root", "link_cgroup"]

MOUNTINFO = Path("/proc/self/mountinfo")
BPF_CGROUP_INET_SOCK_CREATE = 2
_BPF_LINK_CREATE = 28
_SYS_BPF = {"x86_64": 321, "aarch64": 280}


class _LinkCreate(ct.Structure):
    """The start of ``union bpf_attr`` for BPF_LINK_CREATE (the rest zero)."""

    _fields_ = [("prog_fd", ct.c_uint32), ("target_fd", ct.c_uint32), ("attach_type", ct.c_uint32),
                ("flags", ct.c_uint32), ("rest", ct.c_uint8 * 112)]


def cgroup2_root(mountinfo: Path = MOUNTINFO) -> tuple[Path | None, str]:
    """Where the root of the cgroup v2 hierarchy (every process of the machine is below it) is mounted:
    ``/sys/fs/cgroup`` on a unified host, ``/sys/fs/cgroup/unified`` on a hybrid one; else None and why."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError as exc:
        return None, f"{mountinfo}: {exc.strerror}"
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "cgroup2" and fields[3] == "/":   # the hierarchy's root, not a bind of a subtree
            return Path(fields[4].replace("\\040", " ")), ""
    return None, "no cgroup v2 hierarchy is mounted (its root) in this mount namespace"


def link_cgroup(prog_fd: int, cgroup: Path, attach_type: int) -> int:
    """Attach the loaded program ``prog_fd`` to ``cgroup`` (and so to every cgroup below it) through a new
    BPF link; returns the link's fd. OSError with the kernel's errno when refused."""
    machine = os.uname().machine
    if machine not in _SYS_BPF:
        raise OSError(0, f"bpf(2) syscall number unknown for {machine}")
    target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = _LinkCreate(prog_fd=prog_fd, target_fd=target, attach_type=attach_type, flags=0)
        libc = ct.CDLL(None, use_errno=True)
        libc.syscall.restype = ct.c_long
        fd = int(libc.syscall(ct.c_long(_SYS_BPF[machine]), ct.c_int(_BPF_LINK_CREATE), ct.byref(attr),
                              ct.c_uint(ct.sizeof(attr))))
        if fd < 0:
            err = ct.get_errno()
            raise OSError(err, f"BPF_LINK_CREATE on {cgroup}: {os.strerror(err)}")
        return fd
    finally:
        os.close(target)
