"""The fanotify enforcer's own account of a refusal, published like AppArmor's: a raw event of the
monitor's kind (``exec`` or ``file``) that names its enforcer in ``extra``.

The monitor's record of the failed syscall already becomes an alert when its path matches the rule. The
report is there for what that record cannot say: fanotify judges the file the kernel resolved, the monitor
reads the path the program wrote, so an exec or open through a symlink (``/usr/bin/python3`` of a rule on
``/usr/bin/python3.6``) is refused by inode with no alert from the monitor's record. The report names the
path the rule matched. When both reach the feeder, it keeps one (``services/feeder/dedup.py``).

Built while the refused thread still waits in its syscall, from ``/proc/<tid>``; a field that cannot be
read is left at its "unknown" value, never guessed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from shared.schemas.events import RawEvent

__all__ = ["FanotifyReport", "ENFORCER", "RESULT", "report_of"]

ENFORCER = "Fanotify"
_EPERM = 1
RESULT = os.strerror(_EPERM)   # what the refused syscall returned: EPERM


@dataclass(frozen=True, slots=True)
class FanotifyReport:
    """One exec or open the fanotify enforcer refused, with the rule that refused it."""

    ts_ns: int
    pid: int
    tid: int
    ppid: int
    ns_pid: int
    uid: int
    gid: int
    mntns: int
    pidns: int
    comm: str
    exe: str
    operation: str   # the rule's: Process or File
    resource: str    # the path the rule matched (the file the kernel resolved)
    access: str      # exec, read or write
    policy: str

    def to_raw_event(self, node: str, boot_offset_ns: int, boot_id: str) -> RawEvent:
        """The event of this refusal, for the feeder (``boot_offset_ns`` unused: wall time already)."""
        kind, syscall = ("exec", "execve") if self.access == "exec" else ("file", "openat")
        return RawEvent(
            kind=kind, ts_ns=self.ts_ns, node=node, pid=self.pid, tid=self.tid, ppid=self.ppid,
            ns_pid=self.ns_pid, ns_ppid=0, uid=self.uid, gid=self.gid, mntns=self.mntns, pidns=self.pidns,
            cgroup_id=0, comm=self.comm, exe=self.exe, path=self.resource, ret=-_EPERM, syscall=syscall,
            flags=1 if self.access == "write" else 0, event_id=f"{boot_id}:fanotify:{self.ts_ns}:{self.tid}",
            extra={"enforcer": ENFORCER, "result": RESULT, "policy": self.policy, "operation": self.operation,
                   "access": self.access},
        )


def _status(tid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{tid}/status", encoding="utf-8", errors="replace") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def _first_int(text: str | None, index: int = 0, default: int = -1) -> int:
    try:
        return int((text or "").split()[index])
    except (ValueError, IndexError):
        return default


def report_of(tid: int, mntns: int, operation: str, resource: str, access: str, exe: str,
              policy: str) -> FanotifyReport:
    """The report of a refusal to thread ``tid`` (still waiting in the refused syscall)."""
    status = _status(tid)
    ns_pids = (status.get("NStgid") or "").split()
    try:
        pidns = os.stat(f"/proc/{tid}/ns/pid").st_ino
    except OSError:
        pidns = 0
    try:
        with open(f"/proc/{tid}/comm", encoding="utf-8", errors="replace") as f:
            comm = f.read().rstrip("\n")
    except OSError:
        comm = ""
    return FanotifyReport(
        ts_ns=time.time_ns(), pid=_first_int(status.get("Tgid"), default=tid), tid=tid,
        ppid=_first_int(status.get("PPid"), default=0),
        ns_pid=int(ns_pids[-1]) if ns_pids and ns_pids[-1].isdigit() else 0,
        uid=_first_int(status.get("Uid")), gid=_first_int(status.get("Gid")), mntns=mntns, pidns=pidns,
        comm=comm, exe=exe, operation=operation, resource=resource, access=access, policy=policy)
