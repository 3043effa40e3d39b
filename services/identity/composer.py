"""Runtime containers + Kubernetes facts -> the identity events to publish (pure, no I/O).

Each provider reports facts (:mod:`services.identity.runtime.facts`); the composer merges a runtime
container with its pod (correlated by container id, whatever the runtime) and namespace, compares the
result with what the identity stream already says (the :class:`Registry`), and returns only the
events that change it: nothing is re-announced, containers gone while we were away are stopped.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from services.identity.host import host_workload_id
from services.identity.kube.pods import NamespaceIndex, PodIndex
from services.identity.registry import Registry
from services.identity.runtime.facts import KubeEvent, KubeReset, Remove, RuntimeContainer, Snapshot, Upsert
from services.identity.settings import DNS_LABEL
from shared.schemas.identity import Workload

__all__ = ["Composer", "Plan", "COMPOSE_PROJECT", "K8S_POD_NS", "K8S_POD_NAME", "K8S_CONTAINER"]

Plan = list[tuple[str, Workload]]
COMPOSE_PROJECT = "com.docker.compose.project"
K8S_POD_NS = "io.kubernetes.pod.namespace"
K8S_POD_NAME = "io.kubernetes.pod.name"
K8S_CONTAINER = "io.kubernetes.container.name"
_VOLATILE = ("started_ns", "stopped_ns")


def _content(wl: Workload) -> dict[str, Any]:
    data = wl.to_wire()
    for key in _VOLATILE:
        data.pop(key, None)
    return data


class Composer:
    """Decides identity events for one node from every provider's facts."""

    def __init__(self, node: str, registry: Registry, docker_namespace: str = "docker",
                 compose_namespace: bool = False, kube: bool = False) -> None:
        self.node = node
        # Until the first pod LIST after a (re)start, keep the pod identity the stream already holds
        # (no flap to a bare container identity, during which pod policies would not apply).
        self.pods_pending = kube
        self.registry = registry
        self.docker_namespace = docker_namespace
        self.compose_namespace = compose_namespace
        self.containers: dict[str, dict[str, RuntimeContainer]] = {}
        self.pods = PodIndex()
        self.namespaces = NamespaceIndex()
        self.node_labels: dict[str, str] | None = None

    # -- facts in, events out ------------------------------------------------------------------
    def handle(self, item: object) -> Plan:
        """The identity events one provider fact calls for."""
        if isinstance(item, Snapshot):
            return self.snapshot(item)
        if isinstance(item, Upsert):
            self.containers.setdefault(item.source, {})[item.container.id] = item.container
            return self._diff(self.workload_for(item.source, item.container))
        if isinstance(item, Remove):
            self.containers.get(item.source, {}).pop(item.id, None)
            return self._stop(item.source, item.id, item.ts_ns)
        if isinstance(item, (KubeReset, KubeEvent)):
            return self.kube(item)
        raise TypeError(f"composer: unknown fact {type(item).__name__}")

    def snapshot(self, snap: Snapshot) -> Plan:
        """Reconcile every workload of ``snap.source`` on this node with the runtime's full list."""
        current = {c.id: c for c in snap.containers}
        self.containers[snap.source] = current
        plan: Plan = []
        for rc in current.values():
            plan += self._diff(self.workload_for(snap.source, rc))
        for wl in self.registry.running(self.node):
            if wl.source == snap.source and wl.id not in current:
                plan += self._stop(snap.source, wl.id, 0)
        return plan

    def kube(self, item: KubeReset | KubeEvent) -> Plan:
        """Fold a Kubernetes fact; re-derive the workloads it may change."""
        indexes: dict[str, PodIndex | NamespaceIndex] = {"pods": self.pods, "namespaces": self.namespaces}
        index = indexes.get(item.resource)
        if index is not None:
            if isinstance(item, KubeReset):
                index.reset(list(item.items))
                if item.resource == "pods":
                    self.pods_pending = False
            else:
                index.apply(item.type, item.obj)
            return self.refresh()
        if item.resource == "nodes":
            objs = list(item.items) if isinstance(item, KubeReset) else ([] if item.type == "DELETED" else [item.obj])
            mine = [o for o in objs if (o.get("metadata") or {}).get("name") == self.node]
            if mine:
                self.node_labels = {str(k): str(v) for k, v in (mine[0]["metadata"].get("labels") or {}).items()}
                return self.host_plan()
        return []

    def refresh(self) -> Plan:
        """Re-derive every known container's workload (after pods or namespaces changed)."""
        plan: Plan = []
        for source, containers in self.containers.items():
            for rc in containers.values():
                plan += self._diff(self.workload_for(source, rc))
        return plan

    def host_plan(self) -> Plan:
        """A ``changed`` event for the host workload when the node's labels differ from its labels."""
        host = self.registry.get(host_workload_id(self.node))
        if host is None or host.stopped_ns or self.node_labels is None:
            return []
        labels = {"kubernetes.io/hostname": self.node, **self.node_labels}
        return [] if labels == host.labels else [("changed", dataclasses.replace(host, labels=labels))]

    def wanted_cri_ids(self) -> set[str]:
        """Running pod containers of non-Docker runtimes that no provider has located yet."""
        known = {cid for containers in self.containers.values() for cid in containers}
        return {c.id for c in self.pods.by_id.values() if c.running and c.runtime != "docker" and c.id not in known}

    # -- merging -------------------------------------------------------------------------------
    def workload_for(self, source: str, rc: RuntimeContainer) -> Workload:
        """The workload of a runtime container: its pod's identity when correlated, else the runtime's."""
        pc = self.pods.get(rc.id)
        known = self.registry.get(rc.id)
        if pc is None and self.pods_pending and known is not None and known.pod and known.mntns == rc.mntns:
            return dataclasses.replace(known, cgroup=rc.cgroup, host_pid=rc.pid, source=source, stopped_ns=0)
        labels, annotations, image, pod = dict(rc.labels), {}, rc.image, ""
        if pc is not None:
            namespace, pod, name = pc.namespace, pc.pod, pc.container
            labels, annotations, image = dict(pc.labels), dict(pc.annotations), pc.image or rc.image
        elif K8S_POD_NS in rc.labels:  # dockershim / cri-dockerd labels, pod not (yet) seen
            namespace, pod = rc.labels[K8S_POD_NS], rc.labels.get(K8S_POD_NAME, "")
            name = rc.labels.get(K8S_CONTAINER, rc.name)
            labels = {k: v for k, v in rc.labels.items() if not k.startswith("io.kubernetes.")}
        else:
            project = rc.labels.get(COMPOSE_PROJECT, "")
            namespace = project if (self.compose_namespace and DNS_LABEL.match(project)) else self.docker_namespace
            name = rc.name
        return Workload(
            id=rc.id, name=name, namespace=namespace, kind="container", node=self.node, mntns=rc.mntns,
            pidns=rc.pidns, labels=labels, namespace_annotations=self.namespaces.get(namespace) if pod else {},
            annotations=annotations, pod=pod, image=image, cgroup=rc.cgroup, host_pid=rc.pid, source=source,
            started_ns=rc.started_ns or time.time_ns(),
        )

    def _diff(self, new: Workload) -> Plan:
        known = self.registry.get(new.id)
        if known is None or known.stopped_ns:
            return [("started", new)]
        if (known.node, known.mntns, known.pidns) != (new.node, new.mntns, new.pidns):
            # A new incarnation (restarted container): the old namespaces are gone.
            gone = dataclasses.replace(known, stopped_ns=time.time_ns())
            return [("stopped", gone), ("started", new)]
        new.started_ns = known.started_ns
        return [] if _content(known) == _content(new) else [("changed", new)]

    def _stop(self, source: str, cid: str, ts_ns: int) -> Plan:
        known = self.registry.get(cid)
        if known is None or known.stopped_ns or known.source != source or known.node != self.node:
            return []
        return [("stopped", dataclasses.replace(known, stopped_ns=ts_ns or time.time_ns()))]
