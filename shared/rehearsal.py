"""Replaying stored records through a policy set: the engine of rehearsal (``bulwark policy simulate
--history`` and ``POST /api/v1/policies/rehearse``), pure and shared by the CLI and the feeder.

Each stored record (a log or an alert as the feeder wrote it) is turned back into the access the feeder
judged (:func:`record_access`) and its workload (:func:`record_workload`), then judged by the matcher
(``shared.loaders.decide_access``) against the rules a ``rules_for`` callable compiles for that
workload. What the record says happened (its Action for an alert, nothing for a log) is compared with
the new verdict:

* ``blocked``: newly Block (the operation would now fail);
* ``audited``: newly reported (Audit, or ``Audit (Block)`` for audited workloads);
* ``unblocked`` / ``silenced``: a Block, or an alert, that would no longer happen.

Memory is bounded: compiled rules per distinct workload, a verdict cache that is cleared when full,
and at most ``max_groups`` distinct (workload, change, operation, resource, source, policy) groups per
workload (more are counted in ``other``).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shared.loaders import decide_access, is_program_loader
from shared.matcher import Access, Posture, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, WorkloadRules

__all__ = ["CHANGES", "record_access", "record_workload", "workload_key", "selected", "Replay", "RulesFor", "replay"]

_PROTOCOL = re.compile(r"(?:^|\s)protocol=(\S+)")
_SYSCALL = re.compile(r"syscall=(?:SYS_)?(\w+)")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
CHANGES = ("blocked", "audited", "unblocked", "silenced")
RulesFor = Callable[[Workload], WorkloadRules]
"""Compiles the rules of one workload (the candidate set plus what stays applied)."""


# -- records -> what was judged ---------------------------------------------------------------------
def _file_access(data: str) -> str:
    """``read`` or ``write`` from a File record's Data (``syscall=SYS_OPENAT fd=-100 flags=O_RDONLY``)."""
    call = data[8:].split(" ", 1)[0] if data.startswith("syscall=") else ""
    if call and not call.startswith("SYS_OPEN") and call != "SYS_CREAT":
        return "write"  # unlink, rmdir, chown change the file
    flags = data.partition("flags=")[2].split(" ", 1)[0]
    return "write" if any(f in flags for f in _WRITE_FLAGS) else "read"


def _source(r: dict[str, Any], op: str) -> str:
    """The executable that acted: a Process record's Source; for the others, whose Source is a command
    line (executable and arguments, as KubeArmor's), their ProcessName (older records: their Source)."""
    if op == "Process":
        return str(r.get("Source", ""))
    return str(r.get("ProcessName") or r.get("Source", ""))


def record_access(r: dict[str, Any]) -> Access | None:
    """The access a stored record stands for (as services/feeder/kinds.py built it); None if not judged."""
    op, resource = str(r.get("Operation", "")), str(r.get("Resource", ""))
    source = _source(r, op)
    uid = r.get("UID", -1)
    uid = uid if isinstance(uid, int) and not isinstance(uid, bool) else -1
    data = str(r.get("Data", ""))
    if op == "Process":
        return Access("Process", resource, source=source, access="exec", uid=uid)
    if op == "File":
        return Access("File", resource, source=source, access=_file_access(data), uid=uid)
    if op == "Network":
        found = _PROTOCOL.search(resource)
        protocol = (found.group(1) if found else resource).lower()
        return Access("Network", protocol, source=source, uid=uid, protocol=protocol) if protocol else None
    if op == "Capabilities":
        return Access("Capabilities", resource, source=source, uid=uid, capability=resource) if resource else None
    if op == "Syscall":
        call = _SYSCALL.search(data)
        return Access("Syscall", resource, source=source, uid=uid, syscall=call.group(1).lower() if call else "")
    return None


def _labels(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)


def workload_key(r: dict[str, Any]) -> str:
    """``namespace/pod/container`` of a container record, ``host:NODE`` of a host one."""
    if r.get("ContainerName") or r.get("PodName") or r.get("ContainerID"):
        return f"{r.get('NamespaceName', '')}/{r.get('PodName', '')}/{r.get('ContainerName', '')}"
    return f"host:{r.get('HostName', '')}"


def record_workload(r: dict[str, Any]) -> Workload:
    """The workload a record names (namespace, labels, container name; or the host with its labels)."""
    host = not (r.get("ContainerName") or r.get("PodName") or r.get("ContainerID"))
    labels = _labels(str(r.get("Labels", "")))
    return Workload(id=workload_key(r), name=str(r.get("ContainerName") or r.get("HostName") or ""),
                    namespace="" if host else str(r.get("NamespaceName", "")), kind="host" if host else "container",
                    node=str(r.get("HostName", "")), mntns=0, pidns=0, labels=labels,
                    pod=str(r.get("PodName", "")), image=str(r.get("ContainerImage", "")))



def selected(records: Iterable[dict[str, Any]], labels: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The records whose workload carries every one of ``labels``."""
    for r in records:
        if not labels or all(_labels(str(r.get("Labels", ""))).get(k) == v for k, v in labels.items()):
            yield r



# -- the replay ----------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _is_loader(source: str) -> bool:
    return is_program_loader(source)


def _old_action(r: dict[str, Any]) -> str:
    if str(r.get("Type", "")).startswith("Matched"):
        return str(r.get("Action", "")) or "Block"
    return "Allow"


def _change(old: str, new: str) -> str | None:
    if new == "Block" and old != "Block":
        return "blocked"
    if new in ("Audit", "Audit (Block)") and old == "Allow":
        return "audited"
    if old == "Block" and new != "Block":
        return "unblocked"
    if old != "Allow" and new == "Allow":
        return "silenced"
    return None


@dataclass
class _Group:
    count: int = 0
    example: dict[str, Any] = field(default_factory=dict)


@dataclass
class Replay:
    """Judges records against the rules ``rules_for`` gives each workload; gathers the changes."""

    rules_for: RulesFor
    max_groups: int = 1000
    cache_size: int = 200_000
    records: int = 0
    judged: int = 0
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGES, 0))
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    _rules: dict[str, tuple[dict[str, list[Rule]], Posture]] = field(default_factory=dict)
    _verdicts: dict[tuple[Any, ...], tuple[str, str]] = field(default_factory=dict)

    def _compiled(self, r: dict[str, Any], wk: str) -> tuple[str, tuple[dict[str, list[Rule]], Posture]]:
        """The record's workload's rules per operation (File also gets Process: a loader's open is an
        exec, shared.loaders) and its posture, asked of ``rules_for`` once per distinct workload."""
        key = f"{wk}\0{r.get('Labels', '')}"
        entry = self._rules.get(key)
        if entry is None:
            if len(self._rules) >= 10_000:
                self._rules.clear()
            wr = self.rules_for(record_workload(r))
            by_op: dict[str, list[Rule]] = {}
            for rule in wr.rules:
                by_op.setdefault(rule.operation, []).append(rule)
            by_op["File"] = by_op.get("File", []) + by_op.get("Process", [])
            entry = self._rules[key] = (by_op, Posture.of(wr))
        return key, entry

    def verdict(self, r: dict[str, Any], access: Access, wk: str = "") -> tuple[str, str]:
        """(action, policy) the candidate set gives the record's access; ("Allow", "") when nothing decides."""
        key, (by_op, posture) = self._compiled(r, wk or workload_key(r))
        ck = (key, access)
        hit = self._verdicts.get(ck)
        if hit is None:
            rules = by_op.get(access.operation, [])
            # decide_access adds the exec a loader's open stands for; other sources need only decide()
            d = (decide_access(rules, access, posture) if _is_loader(access.source)
                 else decide(rules, access, posture))
            hit = (d.action, d.policy) if d is not None else ("Allow", "")
            if len(self._verdicts) >= self.cache_size:
                self._verdicts.clear()
            self._verdicts[ck] = hit
        return hit

    def feed(self, r: dict[str, Any]) -> None:
        """Judge one stored record and count it."""
        self.records += 1
        access = record_access(r)
        if access is None:
            return
        self.judged += 1
        wk = workload_key(r)
        new, policy = self.verdict(r, access, wk)
        old = _old_action(r)
        change = _change(old, new)
        if change is None:
            return
        self.totals[change] += 1
        wl = self.workloads.setdefault(wk, {"changes": dict.fromkeys(CHANGES, 0), "groups": {},
                                                         "other": 0})
        wl["changes"][change] += 1
        gk = (change, access.operation, access.resource, access.source, access.access, policy, old, new)
        group = wl["groups"].get(gk)
        if group is None:
            if len(wl["groups"]) >= self.max_groups:
                wl["other"] += 1
                return
            group = wl["groups"][gk] = _Group(example={k: r.get(k) for k in (
                "UpdatedTime", "HostPID", "PID", "ProcessName", "Data", "Result", "EventID") if k in r})
        group.count += 1

    def report(self) -> dict[str, Any]:
        """The result as plain data: totals, and per workload each group, biggest first."""
        out = {}
        for name, wl in sorted(self.workloads.items()):
            groups = [{"change": k[0], "operation": k[1], "resource": k[2], "source": k[3], "access": k[4],
                       "policy": k[5], "was": k[6], "now": k[7], "count": g.count, "example": g.example}
                      for k, g in wl["groups"].items()]
            groups.sort(key=lambda g: (CHANGES.index(g["change"]), -g["count"], g["operation"], g["resource"],
                                       g["source"]))
            out[name] = {"changes": wl["changes"], "groups": groups, "other": wl["other"]}
        return {"records": self.records, "judged": self.judged, "totals": self.totals, "workloads": out}


def replay(records: Iterable[dict[str, Any]], rules_for: RulesFor, max_groups: int = 1000) -> dict[str, Any]:
    """Replay ``records`` through the rules ``rules_for`` compiles; the report (see :meth:`Replay.report`)."""
    reh = Replay(rules_for, max_groups=max_groups)
    for r in records:
        reh.feed(r)
    return reh.report()
