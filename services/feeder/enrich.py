"""Turn a raw kernel event plus its workload and the matcher's decision into a KubeArmor alert.

Pure: no I/O, no clock (the caller passes ``now_ns`` for events without a wall-clock time).

Action/Result/Enforcer semantics (KubeArmor's vocabulary, see the wire contract):

- decision ``Block`` and the syscall failed (``ret < 0``): Action ``Block``, Result = errno text,
  Enforcer = the node's enforcer name (from its heartbeat; ``""`` when none reported yet).
- decision ``Block`` but the syscall succeeded (``ret >= 0``, i.e. not enforced: rules not loaded
  yet, or no enforcer able to block it): Action stays ``Block`` (what the policy says), Result
  ``Passed`` and Enforcer ``eBPF Monitor``, so "Block + Passed" reads as "should have been blocked,
  was only observed".
- decision ``Block`` for a workload annotated ``kubearmor-policy: audited``: Action ``Audit (Block)``.
- decision ``Audit`` (or ``Allow``): Action as decided, Enforcer ``eBPF Monitor``; Result ``Passed``
  when ``ret >= 0`` else the errno text.
- a kill report (kind ``enforce``, ``extra.killed``): the process was killed at the hook, not refused:
  Action ``Block``, Enforcer and Result from the report (``eBPF Signal``, ``Killed (SIGKILL)``).
- a preset (shared.presets) whose Block nothing enforced (the monitor's record, not an enforcer's
  report: no enforcer on the node can block that preset, as ``bulwark probe`` and the policy's
  warnings say): Action ``Audit (Block)``, Result ``Passed``, Enforcer ``eBPF Monitor``. Its
  Operation is the preset's own (Process, File), not ``Preset``.
"""
from __future__ import annotations

import errno
import hashlib
import os
import time
from typing import Any

from services.feeder.eventdata import event_data, exec_event
from services.feeder.kinds import kind_fields, source_text
from shared.matcher import Decision
from shared.presets import PRESET_OPERATION
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload

__all__ = ["build_alert", "build_log", "result_text", "rfc3339", "event_id_of", "alert_time_ns", "MONITOR_ENFORCER"]

MONITOR_ENFORCER = "eBPF Monitor"
_WALLCLOCK_MIN_NS = 10**18  # 2001-09-09: anything earlier is boot time, not wall-clock time


def result_text(ret: int) -> str:
    """KubeArmor's Result: ``Passed`` for success, else the errno text (``Unknown (n)`` if unknown)."""
    if ret >= 0:
        return "Passed"
    code = -ret
    if code in errno.errorcode:
        return os.strerror(code)
    return f"Unknown ({code})"


def rfc3339(ts_ns: int) -> str:
    """``2026-11-26T19:21:31.123456Z``: UTC with microseconds, as KubeArmor prints UpdatedTime."""
    secs, nanos = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos // 1000:06d}Z"


def alert_time_ns(alert: dict[str, Any]) -> int:
    """The alert's time in nanoseconds, from Timestamp and the fraction in UpdatedTime."""
    secs = int(alert.get("Timestamp", 0))
    frac = str(alert.get("UpdatedTime", "")).rpartition(".")[2].rstrip("Z")
    micros = int(frac[:6].ljust(6, "0")) if frac.isdigit() else 0
    return secs * 1_000_000_000 + micros * 1000


def event_id_of(event: RawEvent) -> str:
    """The event's id, or a deterministic one derived from what identifies it (redelivery-stable)."""
    if event.event_id:
        return event.event_id
    key = f"{event.node}|{event.kind}|{event.ts_ns}|{event.pid}|{event.tid}|{event.path}|{event.ret}"
    return hashlib.sha1(key.encode()).hexdigest()


def _action(decision: Decision, workload: Workload) -> str:
    if decision.action == "Block" and workload.annotations.get("kubearmor-policy") == "audited":
        return "Audit (Block)"
    return decision.action


def _refresh_event_data(record: dict[str, Any]) -> None:
    """Set EventData from Data (and Resource); none when there are no pairs."""
    parsed = event_data(record)
    if parsed:
        record["EventData"] = parsed
    else:
        record.pop("EventData", None)


def _common(event: RawEvent, workload: Workload, cluster: str, now_ns: int) -> dict[str, Any]:
    """The fields alerts and logs share (who, where, when, what)."""
    ts_ns = event.ts_ns if event.ts_ns >= _WALLCLOCK_MIN_NS or not now_ns else now_ns
    fields = kind_fields(event)
    container = workload.kind != "host"
    record: dict[str, Any] = {
        "Timestamp": ts_ns // 1_000_000_000,
        "UpdatedTime": rfc3339(ts_ns),
        "ClusterName": cluster,
        "HostName": event.node,
        "NamespaceName": workload.namespace if container else "",
        "PodName": (workload.pod or workload.name) if container else "",
        "Labels": workload.labels_text,
        "ContainerID": workload.id if container else "",
        "ContainerName": workload.name if container else "",
        "ContainerImage": workload.image if container else "",
        "HostPPID": event.ppid,
        "HostPID": event.pid,
        "PPID": event.ns_ppid,
        "PID": event.ns_pid,
        "UID": event.uid,
        "ParentProcessName": event.exe,
        "ProcessName": fields["ProcessName"],
        "Source": source_text(event, fields["Operation"]),
        "Operation": fields["Operation"],
        "Resource": fields["Resource"],
        "Data": fields["Data"],
        "Result": result_text(event.ret),
        "Cwd": event.cwd,
        "TTY": str(event.extra.get("tty", "")),
        "NodeID": event.node,
        "UserName": str(event.extra.get("user", "")),
        "ExecEvent": exec_event(event.comm),
    }
    _refresh_event_data(record)
    return record


def build_alert(event: RawEvent, workload: Workload, decision: Decision, *, cluster: str,
                enforcer_name: str, now_ns: int = 0, operation: str = "") -> dict[str, Any]:
    """The alert for ``event`` as a map of KubeArmor's PascalCase fields (plus ``EventID``).

    ``operation`` overrides the event kind's Operation when the access was judged as another one
    (a loader's open of a program is its exec: shared.loaders)."""
    action = _action(decision, workload)
    killed = bool(event.extra.get("killed"))
    enforced = action == "Block" and (event.ret < 0 or killed)
    preset = decision.rule is not None and decision.rule.operation == PRESET_OPERATION
    if preset and action == "Block" and not enforced:
        action = "Audit (Block)"  # no enforcer here can block this preset: reported, honestly
    enforcer = str(event.extra.get("enforcer") or enforcer_name) if killed or event.extra.get("enforcer") \
        else enforcer_name
    common = _common(event, workload, cluster, now_ns)
    if killed and event.extra.get("result"):
        common["Result"] = str(event.extra["result"])
    if operation and operation != PRESET_OPERATION:  # a preset's own Operation comes from kind_fields
        common["Operation"] = operation
        common["Source"] = source_text(event, operation)
        _refresh_event_data(common)
    return {
        **common,
        "PolicyName": decision.policy,
        "Severity": str(decision.severity) if decision.severity else "",
        "Tags": ",".join(decision.tags),
        "ATags": list(decision.tags),
        "Message": decision.message,
        "Type": decision.alert_type,
        "Enforcer": (enforcer if enforced else MONITOR_ENFORCER),
        "Action": action,
        "EventID": event_id_of(event),
    }


def build_log(event: RawEvent, workload: Workload, *, cluster: str, now_ns: int = 0) -> dict[str, Any]:
    """The log for an event no rule matched: Type ``ContainerLog`` or ``HostLog``, no policy fields."""
    return {
        **_common(event, workload, cluster, now_ns),
        "Type": "HostLog" if workload.kind == "host" else "ContainerLog",
        "EventID": event_id_of(event),
    }
