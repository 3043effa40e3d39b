"""The policy event log and the state rebuilt from it, plus the workloads known per node.

Policy events on the POLICIES stream (subject POLICY_EVENTS), msgpack:
``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": <stored policy doc>, "ts_ns": int}``.
State is whatever replaying the stream gives: ``(kind, namespace, name) -> StoredPolicy``. A stored
document that no longer passes validation (written by an older version, or by hand) is kept with
status ``invalid`` and the reason, and compiles to nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from services.policy.model import Policy, to_policy
from services.policy.validate import admit
from shared.codec import pack
from shared.errors import DecodeError, ValidationFailed
from shared.nats.subjects import POLICY_EVENTS
from shared.schemas.identity import IdentityEvent, Workload

__all__ = ["EVENT_TYPES", "Key", "StoredPolicy", "PolicyStore", "Workloads", "policy_event",
           "publish_policy_event"]

log = logging.getLogger("bulwark.policy.store")

EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")
Key = tuple[str, str, str]


@dataclass(slots=True)
class StoredPolicy:
    """A policy as stored: the document, its compiled form (None when invalid), the stream sequence
    of its last event, and why it is invalid (empty when applied)."""

    policy: Policy | None
    seq: int
    doc: dict[str, Any]
    error: str = ""

    @property
    def status(self) -> str:
        """``applied`` or ``invalid``."""
        return "invalid" if self.policy is None else "applied"


def doc_key(doc: dict[str, Any]) -> Key:
    """(kind, namespace, name) of a stored document."""
    meta = doc.get("metadata") or {}
    return str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))


class PolicyStore:
    """Applied policies, keyed by (kind, namespace, name); fed only by policy events."""

    def __init__(self) -> None:
        self.items: dict[Key, StoredPolicy] = {}
        self.last_seq = 0

    def get(self, key: Key) -> StoredPolicy | None:
        """The applied policy under ``key``, if any."""
        return self.items.get(key)

    def apply(self, event: dict[str, Any], seq: int) -> Key:
        """Fold one policy event in; DecodeError when it is not one."""
        kind, obj = event.get("type"), event.get("object")
        if kind not in EVENT_TYPES or not isinstance(obj, dict):
            raise DecodeError(f"policy event {seq}: type must be one of {', '.join(EVENT_TYPES)} with an object")
        key = doc_key(obj)
        if kind == "DELETED":
            self.items.pop(key, None)
        else:
            self.items[key] = _stored(obj, seq)
        self.last_seq = max(self.last_seq, seq)
        return key

    def policies(self) -> list[Policy]:
        """Every applied (valid) policy."""
        return [s.policy for s in self.items.values() if s.policy is not None]


def _stored(doc: dict[str, Any], seq: int) -> StoredPolicy:
    """``doc`` re-admitted and compiled; kept as invalid (with the reason) when that fails."""
    try:
        return StoredPolicy(to_policy(admit(doc, f"policy event {seq}").doc), seq, doc)
    except ValidationFailed as exc:
        return StoredPolicy(None, seq, doc, "; ".join(f"{e.path or '(document)'}: {e.message}" for e in exc.errors))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return StoredPolicy(None, seq, doc, f"cannot compile: {exc!r}")


class Workloads:
    """Workloads per node, fed by identity events.

    A stopped workload stays compiled for ``grace_seconds`` after it stopped, so that events it
    caused just before exiting are still judged by its rules wherever they are matched.
    """

    def __init__(self, grace_seconds: float = 60.0) -> None:
        self.grace_ns = int(grace_seconds * 1e9)
        self.by_node: dict[str, dict[str, Workload]] = {}
        self.stopped: dict[str, dict[str, Workload]] = {}
        self.last_seq = 0

    def apply(self, event: IdentityEvent, seq: int) -> str:
        """Fold one identity event in; returns the node it concerns."""
        wl = event.workload
        nodes = self.by_node.setdefault(wl.node, {})
        if event.type == "stopped" or wl.stopped_ns:
            nodes.pop(wl.id, None)
            wl.stopped_ns = wl.stopped_ns or event.ts_ns or time.time_ns()
            if self.grace_ns > 0:
                self.stopped.setdefault(wl.node, {})[wl.id] = wl
        else:
            nodes[wl.id] = wl
            self.stopped.get(wl.node, {}).pop(wl.id, None)
        self.last_seq = max(self.last_seq, seq)
        return wl.node

    def expire(self, now_ns: int | None = None) -> set[str]:
        """Forget workloads stopped longer than the grace ago; returns the nodes that changed."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        changed = set()
        for node, gone in self.stopped.items():
            for wid in [w.id for w in gone.values() if now_ns - w.stopped_ns > self.grace_ns]:
                del gone[wid]
                changed.add(node)
        return changed

    def on_node(self, node: str) -> list[Workload]:
        """The running workloads of ``node``."""
        return list(self.by_node.get(node, {}).values())

    def compiled_on_node(self, node: str) -> list[Workload]:
        """What to compile for ``node``: the running workloads and those within their stop grace."""
        return self.on_node(node) + list(self.stopped.get(node, {}).values())

    def all(self) -> list[Workload]:
        """Every running workload on every node."""
        return [wl for nodes in self.by_node.values() for wl in nodes.values()]


def policy_event(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A policy event map."""
    return {"type": kind, "object": doc, "ts_ns": time.time_ns()}


async def publish_policy_event(js: JetStreamContext, kind: str, doc: dict[str, Any]) -> int:
    """Append one event to the policy log; returns its stream sequence."""
    ack = await js.publish(POLICY_EVENTS, pack(policy_event(kind, doc)))
    return int(ack.seq)
