"""Kill reports: the kernel's struct bw_enf_record -> KillRecord -> a RawEvent of kind ``enforce``.

The event goes out on ``raw_events(node)`` like the monitor's, so the feeder judges it with the same
matcher. What the feeder reads (see services/feeder/kinds.py, kind ``enforce``):

- ``extra["operation"]`` (Network, Capabilities) and ``extra["match"]`` (``tcp``, ``net_raw``): the
  matcher's Access; ``path`` is the KubeArmor-style Resource (``domain=AF_INET type=SOCK_RAW protocol=1``
  or ``CAP_NET_RAW``);
- ``extra["enforcer"]`` ("eBPF Signal") names the enforcer that acted, ``extra["killed"]`` is True and
  ``extra["result"]`` ("Killed (SIGKILL)") is the Result text: the operation was not refused, the
  process was killed at the hook. ``ret`` is 0 (the syscall itself was not failed).

The BPF-LSM enforcer's reports (``struct bw_lsm_record``: the same head, the resource's path, the
executable) become the same kind of event with ``extra["enforcer"]`` "BPFLSM", ``killed`` False and
``extra["refused"]``: True with ``ret`` -EPERM when the kernel refused the operation, False with
``ret`` 0 when it only audited it; ``extra["access"]`` (read, write, exec) and ``extra["owner"]``
say what the kernel judged, ``extra["match"]`` is the resource (path, protocol or capability name).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from services.enforcer.signal.rules import CAPS, RuleRef
from shared.schemas.events import RawEvent

__all__ = ["KillRecord", "LsmRecord", "parse_record", "parse_lsm_record", "to_raw_event", "RECORD_HEAD",
           "ENFORCER", "LSM_ENFORCER", "RESULT_KILLED", "LSM_RES_LEN"]

ENFORCER = "eBPF Signal"
LSM_ENFORCER = "BPFLSM"
RESULT_KILLED = "Killed (SIGKILL)"
LSM_RES_LEN = 248  # BW_LSM_PATH in bpf/enforce/lsm.c
_EPERM = 1
# kinds of bpf/enforce/lsm.c (low byte of the record's kind; the next byte is the action)
_LSM_KINDS = {1: "Process", 2: "File", 3: "Network", 4: "Capabilities"}
_LSM_ACCESS = ("read", "write", "exec")
_LSM_BLOCK = 1
# ktime, 14 x u32 (pid tid ppid uid gid mntns pidns ns_pid ns_ppid kind rule_id arg0 arg1 arg2), cgroup, comm
RECORD_HEAD = struct.Struct("=Q14IQ16s")
_KIND_NET, _KIND_CAP = 1, 2
_FAMILIES = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET"}
_CAP_NAMES = {v: k for k, v in CAPS.items()}


@dataclass(frozen=True, slots=True)
class KillRecord:
    """One process killed by the signal enforcer, with the rule it broke (None if unknown)."""

    ktime: int
    pid: int
    tid: int
    ppid: int
    uid: int
    gid: int
    mntns: int
    pidns: int
    ns_pid: int
    ns_ppid: int
    kind: int
    rule_id: int
    args: tuple[int, int, int]
    cgroup_id: int
    comm: str
    exe: str
    ref: RuleRef | None

    @property
    def operation(self) -> str:
        """KubeArmor Operation."""
        return "Network" if self.kind == _KIND_NET else "Capabilities"

    @property
    def resource(self) -> str:
        """KubeArmor-style Resource text."""
        if self.kind == _KIND_NET:
            fam, typ, proto = self.args
            return (f"domain={_FAMILIES.get(fam, str(fam))} type={_TYPES.get(typ, str(typ))} "
                    f"protocol={proto}")
        return "CAP_" + _CAP_NAMES.get(self.args[0], str(self.args[0])).upper()


@dataclass(frozen=True, slots=True)
class LsmRecord:
    """One operation the BPF-LSM enforcer refused (``refused``) or audited, with its rule."""

    head: KillRecord
    operation: str
    refused: bool
    access: str
    owner: bool
    path: str

    @property
    def resource(self) -> str:
        """KubeArmor-style Resource text: the path for Process/File, as the signal enforcer's otherwise."""
        return self.path if self.operation in ("Process", "File") else self.head.resource

    @property
    def match(self) -> str:
        """What the matcher judges: the path, the protocol name or the capability name."""
        if self.operation in ("Process", "File"):
            return self.path
        if self.operation == "Capabilities":
            return _CAP_NAMES.get(self.head.args[0], str(self.head.args[0]))
        from services.monitor.decode.kinds import protocol_name

        return protocol_name(*self.head.args).lower()


def parse_lsm_record(data: bytes, refs: dict[int, RuleRef]) -> LsmRecord:
    """Decode one BPF-LSM ring-buffer record (ValueError/DecodeError when malformed)."""
    from services.monitor.decode.exec_record import decode_path

    if len(data) < RECORD_HEAD.size + LSM_RES_LEN:
        raise ValueError(f"BPF-LSM record of {len(data)} bytes")
    (ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, kind, rule_id, a0, a1, a2, cgroup_id,
     comm) = RECORD_HEAD.unpack_from(data)
    res = data[RECORD_HEAD.size:RECORD_HEAD.size + LSM_RES_LEN].split(b"\0", 1)[0].decode(errors="replace")
    exe, _trunc = decode_path(data[RECORD_HEAD.size + LSM_RES_LEN:])
    op_kind, action = kind & 0xFF, (kind >> 8) & 0xFF
    if op_kind not in _LSM_KINDS:
        raise ValueError(f"BPF-LSM record of kind {op_kind}")
    operation = _LSM_KINDS[op_kind]
    sig_kind = _KIND_NET if operation == "Network" else _KIND_CAP
    head = KillRecord(ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, sig_kind, rule_id,
                      (a0, a1, a2), cgroup_id, comm.split(b"\0", 1)[0].decode(errors="replace"), exe,
                      refs.get(rule_id))
    access = _LSM_ACCESS[a0] if operation in ("Process", "File") and a0 < 3 else ""
    return LsmRecord(head, operation, action == _LSM_BLOCK, access, bool(a1) and bool(access), res)


def parse_record(data: bytes, refs: dict[int, RuleRef]) -> KillRecord:
    """Decode one ring-buffer record (ValueError/DecodeError when malformed)."""
    from services.monitor.decode.exec_record import decode_path  # the same bw_path layout as the monitor's

    if len(data) < RECORD_HEAD.size:
        raise ValueError(f"kill record of {len(data)} bytes")
    (ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, kind, rule_id, a0, a1, a2, cgroup_id,
     comm) = RECORD_HEAD.unpack_from(data)
    exe, _trunc = decode_path(data[RECORD_HEAD.size:])
    return KillRecord(ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, kind, rule_id,
                      (a0, a1, a2), cgroup_id, comm.split(b"\0", 1)[0].decode(errors="replace"), exe,
                      refs.get(rule_id))


def _lsm_raw_event(rec: LsmRecord, node: str, boot_offset_ns: int, boot_id: str) -> RawEvent:
    head, ref = rec.head, rec.head.ref
    syscall = {"Process": "execve", "File": "open", "Network": "socket", "Capabilities": "capable"}[rec.operation]
    return RawEvent(
        kind="enforce", ts_ns=head.ktime + boot_offset_ns, node=node, pid=head.pid, tid=head.tid, ppid=head.ppid,
        ns_pid=head.ns_pid, ns_ppid=head.ns_ppid, uid=head.uid, gid=head.gid, mntns=head.mntns,
        pidns=head.pidns, cgroup_id=head.cgroup_id, comm=head.comm, exe=head.exe, path=rec.resource,
        ret=-_EPERM if rec.refused else 0, syscall=syscall,
        event_id=f"{boot_id}:enforce:{head.ktime}:{head.tid}",
        extra={"killed": False, "refused": rec.refused, "enforcer": LSM_ENFORCER,
               "result": "Permission denied" if rec.refused else "Passed", "operation": rec.operation,
               "resource": rec.resource, "match": rec.match, "access": rec.access, "owner": rec.owner,
               "policy": ref.policy if ref else "", "workload_id": ref.workload_id if ref else ""},
    )


def to_raw_event(rec: KillRecord | LsmRecord, node: str, boot_offset_ns: int, boot_id: str) -> RawEvent:
    """The ``enforce`` event the feeder turns into an alert saying the process was killed (or, for
    a BPF-LSM record, that the operation was refused or audited)."""
    if isinstance(rec, LsmRecord):
        return _lsm_raw_event(rec, node, boot_offset_ns, boot_id)
    ref = rec.ref
    match = ref.match if ref else ""
    return RawEvent(
        kind="enforce", ts_ns=rec.ktime + boot_offset_ns, node=node, pid=rec.pid, tid=rec.tid, ppid=rec.ppid,
        ns_pid=rec.ns_pid, ns_ppid=rec.ns_ppid, uid=rec.uid, gid=rec.gid, mntns=rec.mntns, pidns=rec.pidns,
        cgroup_id=rec.cgroup_id, comm=rec.comm, exe=rec.exe, path=rec.resource, ret=0,
        syscall="socket" if rec.kind == _KIND_NET else "capable",
        event_id=f"{boot_id}:enforce:{rec.ktime}:{rec.tid}",
        extra={"killed": True, "signal": "SIGKILL", "enforcer": ENFORCER, "result": RESULT_KILLED,
               "operation": rec.operation, "resource": rec.resource, "match": match,
               "policy": ref.policy if ref else "", "workload_id": ref.workload_id if ref else ""},
    )
