"""Kill reports: the kernel's struct bw_enf_record -> KillRecord -> a RawEvent of kind ``enforce``.

The event goes out on ``raw_events(node)`` like the monitor's, so the feeder judges it with the same
matcher. What the feeder reads (see services/feeder/kinds.py, kind ``enforce``):

- ``extra["operation"]`` (Network, Capabilities) and ``extra["match"]`` (``tcp``, ``net_raw``): the
  matcher's Access; ``path`` is the KubeArmor-style Resource (``domain=AF_INET type=SOCK_RAW protocol=1``
  or ``CAP_NET_RAW``);
- ``extra["enforcer"]`` ("eBPF Signal") names the enforcer that acted, ``extra["killed"]`` is True and
  ``extra["result"]`` ("Killed (SIGKILL)") is the Result text: the operation was not refused, the
  process was killed at the hook. ``ret`` is 0 (the syscall itself was not failed).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.schemas.events import RawEvent

from services.enforcer.sigrules import CAPS, RuleRef

__all__ = ["KillRecord", "parse_record", "to_raw_event", "RECORD_HEAD", "ENFORCER", "RESULT_KILLED"]

ENFORCER = "eBPF Signal"
RESULT_KILLED = "Killed (SIGKILL)"
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


def parse_record(data: bytes, refs: dict[int, RuleRef]) -> KillRecord:
    """Decode one ring-buffer record (ValueError/DecodeError when malformed)."""
    from services.monitor.decoder import decode_path  # the same bw_path layout as the monitor's

    if len(data) < RECORD_HEAD.size:
        raise ValueError(f"kill record of {len(data)} bytes")
    (ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, kind, rule_id, a0, a1, a2, cgroup_id,
     comm) = RECORD_HEAD.unpack_from(data)
    exe, _trunc = decode_path(data[RECORD_HEAD.size:])
    return KillRecord(ktime, pid, tid, ppid, uid, gid, mntns, pidns, ns_pid, ns_ppid, kind, rule_id,
                      (a0, a1, a2), cgroup_id, comm.split(b"\0", 1)[0].decode(errors="replace"), exe,
                      refs.get(rule_id))


def to_raw_event(rec: KillRecord, node: str, boot_offset_ns: int, boot_id: str) -> RawEvent:
    """The ``enforce`` event the feeder turns into an alert saying the process was killed."""
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
