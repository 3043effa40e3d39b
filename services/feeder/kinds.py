"""Per event kind: what the matcher is asked, and the alert fields that depend on the kind.

One function pair per kind of raw event; a kind missing here is not judged (counted as skipped).
"""
from __future__ import annotations

from shared.matcher import Access
from shared.schemas.events import EVENT_KINDS, RawEvent

__all__ = ["access_for", "kind_fields"]


def _syscall_data(event: RawEvent) -> str:
    name = (event.syscall or ("execve" if event.kind == "exec" else event.kind)).upper()
    return f"syscall={name if name.startswith('SYS_') else 'SYS_' + name}"


def access_for(event: RawEvent) -> Access | None:
    """What the matcher judges for ``event``, or None when this kind is not judged."""
    if event.kind == "exec":
        return Access("Process", event.path, source=event.exe, access="exec", uid=event.uid)
    return None


def kind_fields(event: RawEvent) -> dict[str, str]:
    """The alert fields that depend on the event's kind: Operation, Resource, Data, ProcessName."""
    operation = EVENT_KINDS.get(event.kind, event.kind)
    return {
        "Operation": operation,
        "Resource": event.path,
        "Data": _syscall_data(event),
        "ProcessName": event.path if operation == "Process" else event.exe,
    }
