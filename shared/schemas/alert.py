"""The alert and log record: KubeArmor's PascalCase field names (see the wire contract)."""
from __future__ import annotations

__all__ = ["ALERT_FIELDS", "ALERT_INT_FIELDS"]

# Every scalar field an alert carries, in KubeArmor's spelling. Owner/ExecEvent/EventData are nested.
ALERT_FIELDS: tuple[str, ...] = (
    "Timestamp", "UpdatedTime", "ClusterName", "HostName", "NamespaceName", "PodName", "Labels",
    "ContainerID", "ContainerName", "ContainerImage", "HostPPID", "HostPID", "PPID", "PID", "UID",
    "ParentProcessName", "ProcessName", "PolicyName", "Severity", "Tags", "ATags", "Message", "Type",
    "Source", "Operation", "Resource", "Data", "Enforcer", "Action", "Result", "Cwd", "TTY",
    "NodeID", "UserName",
)
ALERT_INT_FIELDS = frozenset({"Timestamp", "HostPPID", "HostPID", "PPID", "PID", "UID"})
