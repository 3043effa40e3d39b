"""Identity requests: register, stop and list workloads (msgpack request/reply)."""
from __future__ import annotations

import logging
import re
import time
from typing import Any

from nats.js import JetStreamContext

from services.identity.registry import Registry
from shared.codec import pack
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.nats.subjects import identity_events
from shared.schemas.identity import IdentityEvent, Workload

__all__ = ["IdentityApi", "validate_workload"]

log = logging.getLogger("bulwark.identity.api")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def validate_workload(wl: Workload) -> list[str]:
    """Problems with a workload a launcher wants to register, each naming the field."""
    errors = []
    if not wl.id:
        errors.append("workload.id: required")
    if wl.kind not in ("container", "host"):
        errors.append("workload.kind: must be container or host")
    if not wl.mntns or not wl.pidns:
        errors.append("workload.mntns/pidns: required")
    for k, v in wl.labels.items():
        if not _LABEL_KEY.match(k) or len(k) > 317:
            errors.append(f"workload.labels[{k!r}]: not a valid label key")
        if not _LABEL_VALUE.match(v) or len(v) > 63:
            errors.append(f"workload.labels[{k!r}]: {v!r} is not a valid label value")
    return errors


class IdentityApi:
    """Answers identity requests by appending events to the identity stream."""

    def __init__(self, js: JetStreamContext, registry: Registry, counters: Counters) -> None:
        self.js = js
        self.registry = registry
        self.counters = counters

    async def publish(self, event_type: str, wl: Workload) -> int:
        """Append an identity event; returns its stream sequence."""
        event = IdentityEvent(type=event_type, workload=wl, ts_ns=time.time_ns())
        ack = await self.js.publish(identity_events(wl.node), pack(event.to_wire()))
        self.registry.apply(event, ack.seq)
        self.counters.inc(f"events_{event_type}")
        return int(ack.seq)

    async def handle(self, request: Any) -> dict[str, Any]:
        """One request -> its reply; bad requests get ``{"ok": false, "error": ...}``."""
        if not isinstance(request, dict) or "op" not in request:
            raise DecodeError("identity request: expected a map with 'op'")
        op = request["op"]
        if op == "register":
            wl = Workload.from_wire(request.get("workload"))
            errors = validate_workload(wl)
            if errors:
                return {"ok": False, "error": "; ".join(errors)}
            wl.started_ns = wl.started_ns or time.time_ns()
            seq = await self.publish("started", wl)
            log.info("workload registered", extra={"workload": wl.id, "workload_name": wl.name,
                                                   "workload_namespace": wl.namespace})
            return {"ok": True, "seq": seq}
        if op == "stop":
            gone = self.registry.get(str(request.get("id", "")))
            if gone is None:
                return {"ok": False, "error": f"id: no workload {request.get('id')!r}"}
            if not gone.stopped_ns:
                gone.stopped_ns = time.time_ns()
                await self.publish("stopped", gone)
            return {"ok": True}
        if op == "list":
            return {"ok": True, "workloads": [w.to_wire() for w in self.registry.by_id.values()]}
        return {"ok": False, "error": f"op: unknown operation {op!r}"}
