"""KubeArmor's ``EventData``: the key=value pairs of ``Data`` (and, for Network records, of ``Resource``).

KubeArmor fills the map as it pushes each record: ``Data`` is split on whitespace, every token holding
``=`` becomes one entry (split at the first ``=``, so a value may contain ``=``; an empty value is kept),
and the key's first letter is upper-cased (``syscall=SYS_OPENAT flags=O_RDONLY`` -> ``{"Syscall":
"SYS_OPENAT", "Flags": "O_RDONLY"}``). For Operation ``Network`` the pairs of ``Resource``
(``remoteip=10.0.0.1 port=80 protocol=TCP``) are merged in after, so they win on a shared key. A record
with neither gets no map. The record's ``ExecEvent`` is ``{ExecID, ExecutableName}`` (the task's comm).
"""
from __future__ import annotations

from typing import Any

__all__ = ["parse_pairs", "event_data", "exec_event"]


def parse_pairs(text: str) -> dict[str, str]:
    """The key=value tokens of ``text``, keys with their first letter upper-cased (later keys win)."""
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key[:1].upper() + key[1:]] = value
    return out


def event_data(record: dict[str, Any]) -> dict[str, str]:
    """EventData for a record from its ``Data`` and, when Operation is Network, its ``Resource``."""
    merged = parse_pairs(str(record.get("Data") or ""))
    if record.get("Operation") == "Network":
        merged.update(parse_pairs(str(record.get("Resource") or "")))
    return merged


def exec_event(comm: str, exec_id: str = "") -> dict[str, str]:
    """The record's ``ExecEvent``: the exec's id (empty while the monitor reports none) and its comm."""
    return {"ExecID": exec_id, "ExecutableName": comm}
