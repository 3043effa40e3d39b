"""Workload identity: who a process belongs to, and the events that change it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.schemas._wire import from_map, to_map

__all__ = ["Workload", "IdentityEvent", "IDENTITY_EVENT_TYPES"]

IDENTITY_EVENT_TYPES = ("started", "changed", "stopped")


@dataclass(slots=True)
class Workload:
    """A container, a launched workload or the host itself.

    ``kind`` is ``container`` (anything with its own namespaces) or ``host``; ``source`` says who
    reported it (``launcher``, ``docker``, ``kubernetes``, ``host``). ``mntns``/``pidns`` are the
    namespace inode numbers that map a kernel event to this workload.
    """

    id: str
    name: str
    namespace: str
    kind: str
    node: str
    mntns: int
    pidns: int
    labels: dict[str, str] = field(default_factory=dict)
    namespace_annotations: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    pod: str = ""
    image: str = ""
    cgroup: str = ""
    host_pid: int = 0
    source: str = "launcher"
    started_ns: int = 0
    stopped_ns: int = 0

    @property
    def labels_text(self) -> str:
        """Labels as KubeArmor prints them: ``k=v,k2=v2`` in key order."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return to_map(self)

    @classmethod
    def from_wire(cls, data: Any) -> Workload:
        """From a bus map; DecodeError when it is not one."""
        return from_map(cls, data, "workload")


@dataclass(slots=True)
class IdentityEvent:
    """A workload started, changed or stopped (the identity stream is a log of these)."""

    type: str
    workload: Workload
    ts_ns: int

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return {"type": self.type, "workload": self.workload.to_wire(), "ts_ns": self.ts_ns}

    @classmethod
    def from_wire(cls, data: Any) -> IdentityEvent:
        """From a bus map; DecodeError when it is not one."""
        from shared.errors import DecodeError

        if not isinstance(data, dict) or data.get("type") not in IDENTITY_EVENT_TYPES:
            raise DecodeError("identity event: type must be one of " + ", ".join(IDENTITY_EVENT_TYPES))
        return cls(type=data["type"], workload=Workload.from_wire(data.get("workload")),
                   ts_ns=int(data.get("ts_ns", 0)))
