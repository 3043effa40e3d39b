"""Kill reports: the kernel's struct bw_enf_event -> KillRecord -> a RawEvent of kind ``enforce``.

The event goes out on ``raw_events(node)`` like the monitor's, so the feeder judges it with the same
matcher. What the feeder reads (see services/feeder/kinds.py, kind ``enforce``):

- ``extra["operation"]`` (Network, Capabilities) and ``extra["match"]`` (``tcp``, ``net_raw``): the
  matcher's Access; ``path`` is the KubeArmor-style Resource (``domain=AF_INET type=SOCK_RAW protocol=1``
  or ``CAP_NET_RAW``);
- ``extra["enforcer"]`` ("eBPF Signal") names the enforcer that acted, ``extra["killed"]`` is True and
  ``extra["result"]`` ("Killed (SIGKILL)") is the Result text: the operation was not refused, the
  process was killed at the hook. ``ret`` is 0 (the syscall itself was not failed). An INET socket
  refused by the signal enforcer's cgroup program (kind ``BW_ENF_NET | BW_ENF_REFUSED``) has instead
  ``killed`` False, ``refused`` True, ``ret`` -EACCES and Result "Permission denied".

The BPF-LSM enforcer's reports (``struct bw_lsm_event``: the same start, the resource's path, the
executable) become the same kind of event with ``extra["enforcer"]`` "BPFLSM", ``killed`` False and
``extra["refused"]``: True with ``ret`` -EPERM when the kernel refused the operation, False with
``ret`` 0 when it only audited it; ``extra["access"]`` (read, write, exec) and ``extra["owner"]``
say what the kernel judged, ``extra["match"]`` is the resource (path, protocol or capability name).

Both records are declared in bpf/include/events.h; their layouts come from :mod:`shared.bpf.abi`.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from typing import Any

from services.enforcer.signal.rules import CAPS, RuleRef
from shared.bpf.abi import (
    BW_ACT_BLOCK,
    BW_ENF_CAP,
    BW_ENF_NET,
    BW_ENF_REFUSED,
    BW_LSM_CAP,
    BW_LSM_FILE,
    BW_LSM_NETWORK,
    BW_LSM_PROCESS,
    BW_OP_ENF_LSM,
    BW_OP_ENF_SIGNAL,
    BwEnfEvent,
    BwLsmEvent,
    c_text,
    layout,
    offset,
)
from shared.bpf.names import FAMILIES, SOCK_TYPES, protocol_name
from shared.bpf.paths import PATH_SIZE, decode_path
from shared.errors import DecodeError
from shared.schemas.events import RawEvent

__all__ = ["KillRecord", "LsmRecord", "parse_record", "parse_lsm_record", "to_raw_event", "ENFORCER",
           "LSM_ENFORCER", "RESULT_KILLED", "RESULT_REFUSED", "record_head", "kill_record"]

ENFORCER = "eBPF Signal"
LSM_ENFORCER = "BPFLSM"
RESULT_KILLED = "Killed (SIGKILL)"
RESULT_REFUSED = "Permission denied"
_EPERM = 1
_EACCES = 13
# BPF-LSM kinds (low byte of the record's kind; the next byte is the action)
_LSM_KINDS = {BW_LSM_PROCESS: "Process", BW_LSM_FILE: "File", BW_LSM_NETWORK: "Network",
              BW_LSM_CAP: "Capabilities"}
_LSM_ACCESS = ("read", "write", "exec")
# hdr, task, enf of both records (pads skipped): op size ktime, pid tid ppid ns_pid ns_ppid uid gid mntns
# pidns cgroup_id comm, kind rule_id arg0 arg1 arg2
_HEAD = layout(BwEnfEvent, stop="exe", skip=("task.pad", "enf.pad"))
_ENF_SIZE = ctypes.sizeof(BwEnfEvent)
_ENF_EXE = offset(BwEnfEvent, "exe")
_LSM_SIZE = ctypes.sizeof(BwLsmEvent)
_LSM_RES, _LSM_EXE = offset(BwLsmEvent, "res"), offset(BwLsmEvent, "exe")
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
        return "Network" if self.kind & 0xFF == BW_ENF_NET else "Capabilities"

    @property
    def refused(self) -> bool:
        """The kernel refused the operation (the cgroup socket program: EACCES); else the process was killed."""
        return bool(self.kind & BW_ENF_REFUSED)

    @property
    def resource(self) -> str:
        """KubeArmor-style Resource text."""
        if self.kind & 0xFF == BW_ENF_NET:
            fam, typ, proto = self.args
            return (f"domain={FAMILIES.get(fam, str(fam))} type={SOCK_TYPES.get(typ, str(typ))} "
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
        return protocol_name(*self.head.args).lower()


def record_head(data: bytes, op: int, size: int, what: str) -> tuple[Any, ...]:
    """The common start of an enforcement record of op code ``op`` and ``size`` bytes."""
    if len(data) < size:
        raise DecodeError(f"{what} of {len(data)} bytes, expected {size}")
    head = _HEAD.unpack_from(data)
    if head[0] != op or head[1] != size:
        raise DecodeError(f"{what}: op {head[0]}, size {head[1]}; expected op {op}, size {size}")
    return head


def kill_record(head: tuple[Any, ...], exe: str, refs: dict[int, RuleRef]) -> KillRecord:
    (_op, _size, ktime, pid, tid, ppid, ns_pid, ns_ppid, uid, gid, mntns, pidns, cgroup_id, comm, kind,
     rule_id, a0, a1, a2) = head
    return KillRecord(ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, kind, rule_id,
                      (a0, a1, a2), cgroup_id, c_text(comm), exe, refs.get(rule_id))


def parse_lsm_record(data: bytes, refs: dict[int, RuleRef]) -> LsmRecord:
    """Decode one BPF-LSM ring-buffer record (struct bw_lsm_event; DecodeError when malformed)."""
    exe, _trunc = decode_path(data[_LSM_EXE:_LSM_EXE + PATH_SIZE])
    raw = kill_record(record_head(data, BW_OP_ENF_LSM, _LSM_SIZE, "BPF-LSM record"), exe, refs)
    op_kind, action = raw.kind & 0xFF, (raw.kind >> 8) & 0xFF
    if op_kind not in _LSM_KINDS:
        raise DecodeError(f"BPF-LSM record of kind {op_kind}")
    operation = _LSM_KINDS[op_kind]
    head = replace(raw, kind=BW_ENF_NET if operation == "Network" else BW_ENF_CAP)
    a0, a1, _a2 = raw.args
    access = _LSM_ACCESS[a0] if operation in ("Process", "File") and a0 < 3 else ""
    return LsmRecord(head, operation, action == BW_ACT_BLOCK, access, bool(a1) and bool(access),
                     c_text(data[_LSM_RES:_LSM_EXE]))


def parse_record(data: bytes, refs: dict[int, RuleRef]) -> KillRecord:
    """Decode one signal enforcer ring-buffer record (struct bw_enf_event; DecodeError when malformed)."""
    head = record_head(data, BW_OP_ENF_SIGNAL, _ENF_SIZE, "kill record")
    exe, _trunc = decode_path(data[_ENF_EXE:_ENF_EXE + PATH_SIZE])
    return kill_record(head, exe, refs)


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
               "result": RESULT_REFUSED if rec.refused else "Passed", "operation": rec.operation,
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
    acted: dict[str, Any] = ({"killed": False, "refused": True, "result": RESULT_REFUSED} if rec.refused else
                             {"killed": True, "signal": "SIGKILL", "result": RESULT_KILLED})
    return RawEvent(
        kind="enforce", ts_ns=rec.ktime + boot_offset_ns, node=node, pid=rec.pid, tid=rec.tid, ppid=rec.ppid,
        ns_pid=rec.ns_pid, ns_ppid=rec.ns_ppid, uid=rec.uid, gid=rec.gid, mntns=rec.mntns, pidns=rec.pidns,
        cgroup_id=rec.cgroup_id, comm=rec.comm, exe=rec.exe, path=rec.resource, ret=-_EACCES if rec.refused else 0,
        syscall="socket" if rec.operation == "Network" else "capable",
        event_id=f"{boot_id}:enforce:{rec.ktime}:{rec.tid}",
        extra={**acted, "enforcer": ENFORCER, "operation": rec.operation, "resource": rec.resource, "match": match,
               "policy": ref.policy if ref else "", "workload_id": ref.workload_id if ref else ""},
    )
