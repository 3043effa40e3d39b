"""Preset reports: an enforcer blocked a preset's attack (BW_OP_ENF_PRESET, struct bw_lsm_event).

The eBPF signal enforcer kills (``BW_PRE_KILLED``), BPF-LSM refuses (-EPERM). Either becomes a raw
event of kind ``enforce`` with ``extra["operation"]`` ``Preset`` and ``extra["preset"]`` its name,
which the feeder judges with the same matcher as the monitor's preset records (shared.presets):
Action Block, Result ``Killed (SIGKILL)`` or ``Permission denied``, Enforcer the one that acted.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from services.enforcer.reports.kernel import (
    ENFORCER,
    LSM_ENFORCER,
    RESULT_KILLED,
    RESULT_REFUSED,
    KillRecord,
    kill_record,
    record_head,
)
from services.enforcer.signal.rules import RuleRef
from shared.bpf.abi import (
    BW_OP_ENF_PRESET,
    BW_PRE_KILLED,
    BW_PRE_MEMFD,
    BW_PRE_MPROTECT,
    BW_PRESET_ANON_MAP_EXEC,
    BW_PRESET_FILELESS_EXEC,
    BW_PRESET_PROTECT_ENV,
    BwLsmEvent,
    c_text,
    offset,
)
from shared.bpf.names import map_flags_text, prot_text
from shared.bpf.paths import PATH_SIZE, decode_path
from shared.errors import DecodeError
from shared.presets import BY_KERNEL_ID, PRESET_OPERATION
from shared.schemas.events import RawEvent

__all__ = ["PresetReport", "parse_preset_record", "is_preset_record"]

_EPERM = 1
_SIZE = ctypes.sizeof(BwLsmEvent)
_RES, _EXE = offset(BwLsmEvent, "res"), offset(BwLsmEvent, "exe")
_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class PresetReport:
    """One preset's attack a program blocked: who, which preset, killed or refused, on what."""

    head: KillRecord
    preset: str
    killed: bool
    resource: str
    exe: str
    syscall: str
    details: dict[str, Any]

    @property
    def refused(self) -> bool:
        """BPF-LSM refused it (else the signal enforcer killed it)."""
        return not self.killed

    @property
    def ref(self) -> RuleRef | None:
        """The rule that asked for the Block (None if its id is unknown)."""
        return self.head.ref

    def to_raw_event(self, node: str, boot_offset_ns: int, boot_id: str) -> RawEvent:
        """The ``enforce`` event the feeder turns into this preset's Block alert."""
        h, ref = self.head, self.head.ref
        return RawEvent(
            kind="enforce", ts_ns=h.ktime + boot_offset_ns, node=node, pid=h.pid, tid=h.tid, ppid=h.ppid,
            ns_pid=h.ns_pid, ns_ppid=h.ns_ppid, uid=h.uid, gid=h.gid, mntns=h.mntns, pidns=h.pidns,
            cgroup_id=h.cgroup_id, comm=h.comm, exe=self.exe, path=self.resource, ret=0 if self.killed else -_EPERM,
            syscall=self.syscall, event_id=f"{boot_id}:enforce:{h.ktime}:{h.tid}",
            extra={"killed": self.killed, "refused": not self.killed,
                   **({"signal": "SIGKILL"} if self.killed else {}),
                   "enforcer": ENFORCER if self.killed else LSM_ENFORCER,
                   "result": RESULT_KILLED if self.killed else RESULT_REFUSED, "operation": PRESET_OPERATION,
                   "preset": self.preset, "match": self.preset, "resource": self.resource,
                   "policy": ref.policy if ref else "", "workload_id": ref.workload_id if ref else "",
                   **self.details},
        )


def is_preset_record(data: bytes) -> bool:
    """Whether a ring-buffer record is a preset report (its op code)."""
    return len(data) >= 4 and int.from_bytes(data[:4], "little") == BW_OP_ENF_PRESET


def parse_preset_record(data: bytes, refs: dict[int, RuleRef]) -> PresetReport:
    """Decode one preset report (DecodeError when malformed or of an unknown preset)."""
    exe, _trunc = decode_path(data[_EXE:_EXE + PATH_SIZE])
    head = kill_record(record_head(data, BW_OP_ENF_PRESET, _SIZE, "preset report"), exe, refs)
    info = BY_KERNEL_ID.get(head.kind)
    if info is None:
        raise DecodeError(f"preset report of unknown preset {head.kind}")
    pre, a1, a2 = head.args
    res = c_text(data[_RES:_EXE])
    details: dict[str, Any] = {}
    resource, syscall = res.removesuffix(_DELETED), "execve"
    if head.kind == BW_PRESET_FILELESS_EXEC:
        details["memfd"] = bool(pre & BW_PRE_MEMFD)
        if pre & BW_PRE_MEMFD and pre & BW_PRE_KILLED:
            exe = f"/{res} (deleted)"    # killed at exec: the exe is the memfd, whose walk names nothing
        elif not resource:
            resource = exe              # killed at exec: the exe is the deleted file itself
    elif head.kind == BW_PRESET_PROTECT_ENV:
        details["target_pid"], syscall = a1, "openat"
        if not resource.startswith("/"):   # named by its dentry only (5.10's walk-less report)
            resource = f"/proc/{a1}/environ"
    elif head.kind == BW_PRESET_ANON_MAP_EXEC:
        details["prot"] = prot_text(a1)
        if pre & BW_PRE_MPROTECT:
            syscall = "mprotect"
        else:
            details["map_flags"], syscall = map_flags_text(a2), "mmap"
    return PresetReport(head, info.name, bool(pre & BW_PRE_KILLED), resource, exe, syscall, details)
