"""Kubernetes objects as the identity service needs them: pods by container id, namespace annotations.

Pure: fed raw API objects (dicts as the API server sends them), no I/O.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from services.identity.runtime.ids import split_runtime_id

__all__ = ["PodContainer", "PodIndex", "NamespaceIndex", "kubearmor_keys", "meta_key"]

log = logging.getLogger("bulwark.identity.pods")
OWNER_KIND, OWNER_NAME = "bulwark.io/owner-kind", "bulwark.io/owner-name"


def kubearmor_keys(values: Any) -> dict[str, str]:
    """Only the ``kubearmor*`` entries of an annotation map (the ones KubeArmor reads)."""
    if not isinstance(values, dict):
        return {}
    return {str(k): str(v) for k, v in values.items() if str(k).startswith("kubearmor")}


def meta_key(obj: dict[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an API object; ValueError without a name."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ValueError("kubernetes object without metadata.name")
    return str(meta.get("namespace") or ""), str(meta["name"])


@dataclass(frozen=True, slots=True)
class PodContainer:
    """One container of one pod, keyed by its runtime container id."""

    id: str
    runtime: str
    namespace: str
    pod: str
    container: str
    image: str
    labels: dict[str, str]
    annotations: dict[str, str]
    running: bool


def _containers(pod: dict[str, Any]) -> list[PodContainer]:
    namespace, name = meta_key(pod)
    meta, status = pod["metadata"], pod.get("status") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    annotations = kubearmor_keys(meta.get("annotations"))
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict)]
    owner = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
    if owner:
        annotations.update({OWNER_KIND: str(owner.get("kind", "")), OWNER_NAME: str(owner.get("name", ""))})
    out = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            raw = cs.get("containerID") if isinstance(cs, dict) else None
            if not raw:
                continue  # not created yet
            try:
                runtime, cid = split_runtime_id(str(raw))
            except ValueError as exc:
                log.warning("pod container id ignored", extra={"pod": f"{namespace}/{name}", "error": str(exc)})
                continue
            running = isinstance(cs.get("state"), dict) and "running" in cs["state"]
            out.append(PodContainer(id=cid, runtime=runtime, namespace=namespace, pod=name,
                                    container=str(cs.get("name", "")), image=str(cs.get("image", "")),
                                    labels=labels, annotations=annotations, running=running))
    return out


class PodIndex:
    """This node's pods: runtime container id -> :class:`PodContainer`."""

    def __init__(self) -> None:
        self.by_id: dict[str, PodContainer] = {}
        self._pod_ids: dict[tuple[str, str], list[str]] = {}

    def reset(self, pods: list[dict[str, Any]]) -> None:
        """Replace everything with a fresh list."""
        self.by_id.clear()
        self._pod_ids.clear()
        for pod in pods:
            self.apply("ADDED", pod)

    def apply(self, event_type: str, pod: dict[str, Any]) -> None:
        """Fold one watch event; ValueError for an object without a name."""
        key = meta_key(pod)
        for cid in self._pod_ids.pop(key, []):
            self.by_id.pop(cid, None)
        if event_type == "DELETED":
            return
        found = _containers(pod)
        self._pod_ids[key] = [c.id for c in found]
        for c in found:
            self.by_id[c.id] = c

    def get(self, container_id: str) -> PodContainer | None:
        """The pod container with this runtime id, if this node runs it."""
        return self.by_id.get(container_id)


class NamespaceIndex:
    """Namespace -> its ``kubearmor-*`` annotations (postures, visibility)."""

    def __init__(self) -> None:
        self.annotations: dict[str, dict[str, str]] = {}

    def reset(self, items: list[dict[str, Any]]) -> None:
        """Replace everything with a fresh list."""
        self.annotations.clear()
        for obj in items:
            self.apply("ADDED", obj)

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        """Fold one watch event."""
        _, name = meta_key(obj)
        if event_type == "DELETED":
            self.annotations.pop(name, None)
        else:
            self.annotations[name] = kubearmor_keys(obj["metadata"].get("annotations"))

    def get(self, namespace: str) -> dict[str, str]:
        """The namespace's annotations ({} when unknown)."""
        return dict(self.annotations.get(namespace, {}))
