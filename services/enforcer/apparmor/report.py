"""An AppArmor audit record of a Bulwark profile -> an AppArmorReport -> the RawEvent the feeder judges.

The event has the kind of the access the kernel refused or audited (``exec``, ``file``, ``network``,
``capability``), so the feeder's matcher judges it exactly as it judges the monitor's events; ``ret``
is what the kernel returned (``-EACCES`` for a denial, 0 for an audited access), and ``extra`` says
who acted: ``enforcer`` ``AppArmor``, ``result`` the Result text, ``apparmor`` the record's verdict.
The report itself names the rule (``policy``), decided with the same matcher from the workload's rules.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any

from services.enforcer.apparmor.auditlog import AuditRecord
from shared.bpf.names import FAMILIES, SOCK_TYPES, protocol_name
from shared.loaders import decide_access
from shared.matcher import Access
from shared.schemas.events import RawEvent
from shared.schemas.rules import WorkloadRules

__all__ = ["AppArmorReport", "ENFORCER", "from_record", "access_of"]

ENFORCER = "AppArmor"
_FAMILIES = {"unix": 1, "local": 1, "inet": 2, "inet6": 10, "netlink": 16, "packet": 17}
_TYPES = {"stream": 1, "dgram": 2, "raw": 3, "rdm": 4, "seqpacket": 5, "packet": 10}
_WRITE_MASKS = set("wacdl")
_OPEN_OPS = {"open", "file_perm", "file_receive", "file_inherit", "truncate", "getattr", "file_mmap"}


@dataclass(frozen=True, slots=True)
class AppArmorReport:
    """One access a Bulwark profile denied (``DENIED``) or logged (``AUDIT``), with the rule it matched."""

    ts_ns: int
    serial: int
    verdict: str
    profile: str
    workload_id: str
    mntns: int
    pidns: int
    pid: int
    ns_pid: int
    ppid: int
    uid: int
    comm: str
    exe: str
    operation: str  # KubeArmor's: Process, File, Network, Capabilities
    resource: str
    access: str  # exec, read, write ("" for Network/Capabilities)
    ret: int
    policy: str
    record_op: str  # AppArmor's operation (exec, open, create, capable...)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> str:
        """KubeArmor's Result: what the kernel did."""
        return "Passed" if self.ret >= 0 else os.strerror(-self.ret)

    def to_raw_event(self, node: str, boot_offset_ns: int, boot_id: str) -> RawEvent:
        """The event of this access, for the feeder (``boot_offset_ns`` unused: records carry wall time)."""
        kind, syscall, flags = {"Process": ("exec", "execve", 0), "Network": ("network", "socket", 0),
                                "Capabilities": ("capability", "capable", 0)}.get(
            self.operation, ("file", "openat", 1 if self.access == "write" else 0))
        if kind == "file" and self.record_op not in _OPEN_OPS:
            syscall = self.record_op  # unlink, mkdir, rename_src...: a change, judged as a write
        return RawEvent(
            kind=kind, ts_ns=self.ts_ns, node=node, pid=self.pid, tid=self.pid, ppid=self.ppid,
            ns_pid=self.ns_pid, ns_ppid=0, uid=self.uid, gid=-1, mntns=self.mntns, pidns=self.pidns,
            cgroup_id=0, comm=self.comm, exe=self.exe, path=self.resource, ret=self.ret, syscall=syscall,
            flags=flags, event_id=f"{boot_id}:apparmor:{self.ts_ns}:{self.serial}",
            extra={"enforcer": ENFORCER, "result": self.result, "apparmor": self.verdict,
                   "profile": self.profile, "apparmor_operation": self.record_op, "policy": self.policy,
                   "workload_id": self.workload_id, **self.details},
        )


def _int(value: str | None, default: int = -1) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _proc(pid: int) -> tuple[str, int, int, int]:
    """(exe, ns_pid, ppid, uid) of a live process; what can be read of it, best effort."""
    exe, ns_pid, ppid, uid = "", 0, 0, -1
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f.read(8192).splitlines():
                key, _, value = line.partition(":")
                if key == "NSpid":
                    ns_pid = _int(value.split()[-1], 0) if value.split() else 0
                elif key == "PPid":
                    ppid = _int(value.strip(), 0)
                elif key == "Uid":
                    uid = _int(value.split()[1] if len(value.split()) > 1 else None)
    except OSError:
        pass
    return exe, ns_pid, ppid, uid


def access_of(record: AuditRecord) -> tuple[str, str, str, dict[str, Any]] | None:
    """(operation, resource, access, details) of a record, or None when it is of no kind Bulwark judges."""
    op = record.get("operation", "")
    if "capname" in record or op == "capable":
        name = record.get("capname", "")
        return "Capabilities", "CAP_" + name.upper(), "", {"capability": name, "cap": _int(record.get("capability"))}
    if "family" in record or "sock_type" in record:
        family, stype = _FAMILIES.get(record.get("family", ""), -1), _TYPES.get(record.get("sock_type", ""), -1)
        proto = protocol_name(family, stype, _int(record.get("protocol"), 0))
        return "Network", proto, "", {"protocol": proto, "family": FAMILIES.get(family, record.get("family", "")),
                                      "type": SOCK_TYPES.get(stype, record.get("sock_type", ""))}
    name = record.get("name", "")
    if not name.startswith("/"):
        return None
    if op == "exec":
        return "Process", name, "exec", {}
    mask = record.get("denied_mask") or record.get("requested_mask", "")
    write = bool(set(mask) & _WRITE_MASKS) or op not in _OPEN_OPS
    return "File", name, "write" if write else "read", {"mask": mask}


def from_record(record: AuditRecord, wr: WorkloadRules | None, workload_id: str, profile: str,
                with_proc: bool = True) -> AppArmorReport | None:
    """The report of one record of a Bulwark profile (None when the record names no access Bulwark judges)."""
    got = access_of(record)
    if got is None:
        return None
    operation, resource, access, details = got
    verdict = record.get("apparmor", "")
    pid = _int(record.get("pid"), 0)
    exe, ns_pid, ppid, uid = _proc(pid) if with_proc and pid > 0 else ("", 0, 0, -1)
    uid = _int(record.get("fsuid"), uid) if "fsuid" in record else uid
    ret = 0
    if verdict == "DENIED":
        error = _int(record.get("error"), 0)
        ret = error if error < 0 else -(errno.EPERM if operation == "Capabilities" else errno.EACCES)
    policy = ""
    if wr is not None:
        asked = Access(operation, resource, source=exe, access=access, uid=uid,
                       resource_owner_uid=_int(record.get("ouid")), protocol=details.get("protocol", ""),
                       capability=details.get("capability", ""))
        decision = decide_access(wr, asked)
        policy = decision.policy if decision is not None else ""
    return AppArmorReport(
        ts_ns=_int(record.get("_ts_ns"), 0), serial=_int(record.get("_serial"), 0), verdict=verdict,
        profile=profile, workload_id=workload_id, mntns=wr.mntns if wr else 0, pidns=wr.pidns if wr else 0,
        pid=pid, ns_pid=ns_pid, ppid=ppid, uid=uid, comm=record.get("comm", ""), exe=exe or record.get("comm", ""),
        operation=operation, resource=resource, access=access, ret=ret, policy=policy,
        record_op=record.get("operation", ""), details=details)
