"""KubeArmor policy custom resources -> requests on the policy service's API (POLICY_API).

:func:`policy_requests` is pure (watch facts -> requests); :class:`PolicySink` sends them in order,
retrying with backoff while the policy service does not answer. A policy the policy service rejects is
logged and counted (``k8s_policies_rejected``), never retried.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from nats.aio.client import Client

from services.identity.backoff import Backoff
from services.identity.runtime.facts import KubeEvent, KubeReset
from shared.errors import ServiceUnavailable
from shared.lifecycle import Counters
from shared.nats.bus import request
from shared.nats.subjects import POLICY_API

__all__ = ["POLICY_RESOURCES", "PolicySink", "policy_requests", "API_VERSION"]

log = logging.getLogger("bulwark.identity.policies")
API_VERSION = "security.kubearmor.com/v1"
POLICY_RESOURCES = {"kubearmorpolicies": "KubeArmorPolicy", "kubearmorclusterpolicies": "KubeArmorClusterPolicy",
                    "kubearmorhostpolicies": "KubeArmorHostPolicy"}
Key = tuple[str, str, str]


def _doc(kind: str, obj: dict[str, Any]) -> tuple[Key, dict[str, Any]]:
    raw_meta = obj.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    name = str(meta.get("name") or "")
    if not name:
        raise ValueError(f"{kind} without metadata.name")
    namespace = str(meta.get("namespace") or "") if kind == "KubeArmorPolicy" else ""
    out_meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    doc = {"apiVersion": API_VERSION, "kind": kind, "metadata": out_meta, "spec": obj.get("spec")}
    return (kind, namespace, name), doc


def policy_requests(item: KubeReset | KubeEvent, known: set[Key]) -> list[dict[str, Any]]:
    """The POLICY_API requests a watch fact calls for; updates ``known`` (keys applied from here)."""
    kind = POLICY_RESOURCES[item.resource]
    out: list[dict[str, Any]] = []
    if isinstance(item, KubeReset):
        listed = set()
        for obj in item.items:
            key, doc = _doc(kind, obj)
            listed.add(key)
            out.append({"op": "apply", "text": json.dumps(doc), "source": f"kubernetes:{kind}/{key[2]}"})
        for key in sorted(k for k in known if k[0] == kind and k not in listed):
            out.append({"op": "delete", "kind": key[0], "namespace": key[1], "name": key[2]})
        known.difference_update({k for k in known if k[0] == kind})
        known.update(listed)
        return out
    key, doc = _doc(kind, item.obj)
    if item.type == "DELETED":
        known.discard(key)
        return [{"op": "delete", "kind": key[0], "namespace": key[1], "name": key[2]}]
    known.add(key)
    return [{"op": "apply", "text": json.dumps(doc), "source": f"kubernetes:{kind}/{key[2]}"}]


class PolicySink:
    """Sends policy requests to the policy service, in order, until each is answered."""

    def __init__(self, nc: Client, counters: Counters, backoff: Backoff | None = None) -> None:
        self.nc = nc
        self.counters = counters
        self.backoff = backoff or Backoff()
        self.known: set[Key] = set()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def handle(self, item: KubeReset | KubeEvent) -> None:
        """Queue the requests for one policy watch fact (bad objects are counted and skipped)."""
        try:
            for req in policy_requests(item, self.known):
                self.queue.put_nowait(req)
        except ValueError as exc:
            self.counters.inc("k8s_policies_bad")
            log.warning("policy object ignored", extra={"error": str(exc)})

    async def run(self, stop: asyncio.Event) -> None:
        """Send queued requests until ``stop``."""
        while not stop.is_set():
            try:
                req = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            while not stop.is_set():
                try:
                    reply = await request(self.nc, POLICY_API, req, timeout=10)
                    self.backoff.reset()
                    break
                except ServiceUnavailable as exc:
                    self.counters.inc("k8s_policy_retries")
                    log.warning("policy service unavailable, retrying", extra={"error": str(exc)})
                    await asyncio.sleep(self.backoff.next())
            else:
                return
            if isinstance(reply, dict) and reply.get("ok"):
                self.counters.inc(f"k8s_policies_{req['op']}")
            else:
                self.counters.inc("k8s_policies_rejected")
                log.error("policy service rejected a Kubernetes policy",
                          extra={"source": req.get("source", req.get("name")), "reply": str(reply)[:500]})
