"""KubeArmor's ``policy.PolicyService`` for non-Kubernetes mode, forwarded to the policy service.

Each rpc takes ``{bytes policy}`` holding JSON ``{"type": "ADDED|MODIFIED|DELETED", "object": <policy>}``.
containerPolicy takes KubeArmorPolicy objects (a missing ``kind`` is filled in), hostPolicy
KubeArmorHostPolicy ones, networkPolicy KubeArmorNetworkPolicy ones (the policy service validates
and stores them; they are not enforced yet, see services.policy.compiler). Status: ADDED/MODIFIED ->
Applied (new or unchanged) or Modified (changed), Invalid when the JSON or the policy is invalid;
DELETED -> Deleted or NotExist; Failure when the policy service does not answer.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from nats.aio.client import Client

from shared.bounded import InputError, load_json
from shared.errors import ServiceUnavailable
from shared.lifecycle import Counters
from shared.nats.bus import request
from shared.nats.subjects import POLICY_API
from shared.proto_gen import policy_pb2 as ppb
from shared.proto_gen import policy_pb2_grpc as ppb_grpc

__all__ = ["PolicyService", "parse_policy_event"]

log = logging.getLogger("bulwark.feeder.policy")

_KINDS = {"container": "KubeArmorPolicy", "host": "KubeArmorHostPolicy", "network": "KubeArmorNetworkPolicy"}


def parse_policy_event(data: bytes, scope: str) -> tuple[str, dict[str, Any]]:
    """(type, policy object) from the rpc's bytes; ValueError saying what is wrong."""
    try:
        doc = load_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"policy: not UTF-8: {exc}") from exc
    except InputError as exc:
        raise ValueError(f"policy: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
        raise ValueError('policy: expected {"type": "ADDED|MODIFIED|DELETED", "object": {...}}')
    obj = doc.get("object")
    if not isinstance(obj, dict):
        raise ValueError("policy: 'object' must be a policy map")
    kind = _KINDS[scope]
    obj = {"apiVersion": "security.kubearmor.com/v1", **obj}
    obj.setdefault("kind", kind)
    if obj["kind"] != kind:
        raise ValueError(f"policy: {scope}Policy takes {kind}, got {obj['kind']}")
    return str(doc["type"]), obj


class PolicyService(ppb_grpc.PolicyServiceServicer):
    """Translates rpc calls into POLICY_API requests."""

    def __init__(self, nc: Client, counters: Counters, timeout: float = 5.0) -> None:
        self.nc, self.counters, self.timeout = nc, counters, timeout

    async def containerPolicy(self, req: ppb.policy, context: grpc.aio.ServicerContext) -> ppb.response:
        """Apply or delete a KubeArmorPolicy."""
        return ppb.response(status=await self.handle(req.policy, "container"))

    async def hostPolicy(self, req: ppb.policy, context: grpc.aio.ServicerContext) -> ppb.response:
        """Apply or delete a KubeArmorHostPolicy."""
        return ppb.response(status=await self.handle(req.policy, "host"))

    async def networkPolicy(self, req: ppb.policy, context: grpc.aio.ServicerContext) -> ppb.response:
        """Apply or delete a KubeArmorNetworkPolicy."""
        return ppb.response(status=await self.handle(req.policy, "network"))

    async def handle(self, data: bytes, scope: str) -> ppb.PolicyStatus:
        """The PolicyStatus for one request."""
        try:
            event, obj = parse_policy_event(data, scope)
        except ValueError as exc:
            self.counters.inc("policy_rpc_invalid")
            log.warning("invalid policy rpc", extra={"error": str(exc)})
            return ppb.Invalid
        raw_meta = obj.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        try:
            if event == "DELETED":
                reply = await request(self.nc, POLICY_API, {"op": "delete", "kind": obj["kind"],
                                                            "namespace": str(meta.get("namespace", "")),
                                                            "name": str(meta.get("name", ""))}, self.timeout)
                if not isinstance(reply, dict) or not reply.get("ok", False):
                    return ppb.Invalid
                return ppb.Deleted if reply.get("found") else ppb.NotExist
            reply = await request(self.nc, POLICY_API, {"op": "apply", "text": json.dumps(obj),
                                                        "source": f"grpc:{scope}Policy"}, self.timeout)
        except ServiceUnavailable as exc:
            self.counters.inc("policy_rpc_failures")
            log.warning("policy service unavailable", extra={"error": str(exc)})
            return ppb.Failure
        if not isinstance(reply, dict) or not reply.get("ok"):
            return ppb.Invalid
        statuses = {r.get("status") for r in reply.get("results", []) if isinstance(r, dict)}
        return ppb.Modified if "configured" in statuses else ppb.Applied
