"""What providers report to the composer: runtime containers, pods, namespaces, nodes, policies.

Providers run in threads and hand these immutable facts to the event loop; only the composer turns
them into identity events.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RuntimeContainer", "Snapshot", "Upsert", "Remove", "KubeReset", "KubeEvent"]


@dataclass(frozen=True, slots=True)
class RuntimeContainer:
    """A running container as its runtime (or the cgroup scan) sees it."""

    id: str  # 64 hex
    runtime: str  # docker | containerd | cri-o
    name: str
    image: str
    labels: dict[str, str]
    pid: int
    mntns: int
    pidns: int
    cgroup: str = ""
    started_ns: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every running container of ``source`` right now (after a (re)connect)."""

    source: str
    containers: tuple[RuntimeContainer, ...]


@dataclass(frozen=True, slots=True)
class Upsert:
    """One container of ``source`` started or changed."""

    source: str
    container: RuntimeContainer


@dataclass(frozen=True, slots=True)
class Remove:
    """One container of ``source`` stopped (die/destroy) at ``ts_ns``."""

    source: str
    id: str
    ts_ns: int = 0


@dataclass(frozen=True, slots=True)
class KubeReset:
    """A fresh list of one Kubernetes resource (start, or re-list after 410 Gone)."""

    resource: str  # pods | nodes | namespaces | kubearmorpolicies | ...
    items: tuple[dict[str, Any], ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class KubeEvent:
    """One watch event (ADDED / MODIFIED / DELETED) of one Kubernetes resource."""

    resource: str
    type: str
    obj: dict[str, Any] = field(default_factory=dict)
