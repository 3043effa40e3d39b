"""The POLICY_API request handler: apply, delete and list policies (msgpack request/reply).

Requests and replies::

    {"op": "apply", "text": str}
      -> {"ok": true, "results": [{"kind", "namespace", "name", "status": "created"|"configured"|"unchanged"}],
          "errors": [], "warnings": [{"document", "path", "message"}]}
      -> {"ok": false, "errors": [{"document", "path", "message"}], "results": [], "warnings": []}
    {"op": "delete", "kind", "namespace", "name"} -> {"ok": true, "found": bool}
    {"op": "compile", "text": str, "workloads": [Workload maps], "default_posture": "file=block,...",
     "applied": bool}
      -> {"ok": true, "workloads": {id: WorkloadRules map}, "errors": []}   (rehearsal: the candidate in
         ``text`` plus, when ``applied``, the stored policies it does not replace; nothing is stored)
      -> {"ok": false, "errors": [...]}   (the candidate, the posture or a workload is invalid)
    {"op": "list"} -> {"ok": true, "policies": [{"kind", "namespace", "name", "status": "applied"|"invalid",
                                                 "reason": str (why invalid; "" when applied),
                                                 "selects": [workload names], "policy_seq": int, "spec": {...},
                                                 "warnings": ["spec.presets[0].action: ..."]}]}

An apply is all-or-nothing at validation: one invalid document and nothing is published.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js import JetStreamContext

from services.policy.compiler import compile_rules, selects
from services.policy.model import Policy, to_policy
from services.policy.parser import parse_documents
from services.policy.posture import parse_posture_spec
from services.policy.rulesets import RulePublisher
from services.policy.store import PolicyStore, Workloads, publish_policy_event
from services.policy.validate import KINDS, NAMESPACED, Admitted, admit, canonical_kind, status_warnings
from shared.errors import DecodeError, FieldError, ValidationFailed
from shared.lifecycle import Counters
from shared.schemas.identity import Workload

__all__ = ["PolicyApi", "error_reply"]

log = logging.getLogger("bulwark.policy.api")


MAX_COMPILE_WORKLOADS = 100  # compiled rules of each must fit one NATS reply
MAX_REPLY_ERRORS = 200  # a reply must fit a NATS message: 5,000 documents x 101 errors would not


def _errors(errors: list[FieldError]) -> list[dict[str, str]]:
    shown = [{"document": e.document, "path": e.path, "message": e.message} for e in errors[:MAX_REPLY_ERRORS]]
    if len(errors) > MAX_REPLY_ERRORS:
        shown.append({"document": "", "path": "", "message": f"... and {len(errors) - MAX_REPLY_ERRORS} more errors"})
    return shown


def error_reply(message: str, path: str = "") -> dict[str, Any]:
    """The reply to a request that could not be understood."""
    return {"ok": False, "errors": [{"document": "", "path": path, "message": message}], "results": []}


class PolicyApi:
    """Serves requests against the policy store; every change goes through the event log."""

    def __init__(self, js: JetStreamContext, store: PolicyStore, workloads: Workloads,
                 publisher: RulePublisher, counters: Counters) -> None:
        self.js = js
        self.store = store
        self.workloads = workloads
        self.publisher = publisher
        self.counters = counters
        self.lock = asyncio.Lock()

    async def handle(self, request: Any) -> dict[str, Any]:
        """Answer one decoded request."""
        if not isinstance(request, dict):
            self.counters.inc("bad_requests")
            return error_reply(f"a request must be a map, got {type(request).__name__}")
        op = request.get("op")
        if op == "apply":
            return await self.apply(request)
        if op == "delete":
            return await self.delete(request)
        if op == "list":
            return self.list()
        if op == "compile":
            return self.compile(request)
        self.counters.inc("bad_requests")
        return error_reply(f"unknown op {op!r}: expected apply, delete, list or compile", "op")

    async def apply(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate every document, then publish ADDED/MODIFIED for those that changed."""
        text = request.get("text")
        if not isinstance(text, str):
            self.counters.inc("bad_requests")
            return error_reply("apply needs 'text': the policy YAML or JSON", "text")
        admitted: list[Admitted] = []
        errors: list[FieldError] = []
        try:
            docs = parse_documents(text, str(request.get("source") or ""))
        except ValidationFailed as exc:
            docs, errors = [], list(exc.errors)
        for label, doc in docs:
            try:
                admitted.append(admit(doc, label))
            except ValidationFailed as exc:
                errors.extend(exc.errors)
        if not errors and not admitted:
            errors.append(FieldError("", "no policy documents found"))
        if errors:
            self.counters.inc("apply_rejected")
            return {"ok": False, "errors": _errors(errors), "results": [], "warnings": []}
        results = []
        warnings = [w for a in admitted for w in a.warnings]
        async with self.lock:
            for item in admitted:
                kind, namespace, name = key = item.key
                current = self.store.get(key)
                if current is not None and current.policy is not None and current.doc == item.doc:
                    status = "unchanged"
                else:
                    event = "ADDED" if current is None else "MODIFIED"
                    seq = await publish_policy_event(self.js, event, item.doc)
                    self.store.apply({"type": event, "object": item.doc}, seq)
                    status = "created" if current is None else "configured"
                    self.counters.inc("policy_events")
                results.append({"kind": kind, "namespace": namespace, "name": name, "status": status})
            if any(r["status"] != "unchanged" for r in results):
                await self.publisher.publish_all()
        log.info("policies applied", extra={"results": results})
        return {"ok": True, "results": results, "errors": [], "warnings": _errors(warnings)}

    async def delete(self, request: dict[str, Any]) -> dict[str, Any]:
        """Publish DELETED for one policy; ``found`` says whether it existed."""
        kind = canonical_kind(str(request.get("kind") or ""))
        name = request.get("name")
        if kind not in KINDS:
            self.counters.inc("bad_requests")
            return {**error_reply(f"kind must be one of {', '.join(KINDS)}", "kind"), "found": False}
        if not isinstance(name, str) or not name:
            self.counters.inc("bad_requests")
            return {**error_reply("delete needs a 'name'", "name"), "found": False}
        namespace = (str(request.get("namespace") or "") or "default") if kind in NAMESPACED else ""
        async with self.lock:
            current = self.store.get((kind, namespace, name))
            if current is None:
                return {"ok": True, "found": False, "errors": []}
            seq = await publish_policy_event(self.js, "DELETED", current.doc)
            self.store.apply({"type": "DELETED", "object": current.doc}, seq)
            self.counters.inc("policy_events")
            await self.publisher.publish_all()
        log.info("policy deleted", extra={"kind": kind, "namespace": namespace, "policy": name})
        return {"ok": True, "found": True, "errors": []}

    def compile(self, request: dict[str, Any]) -> dict[str, Any]:
        """Compile a candidate set (plus the applied policies it does not replace) for given workloads."""
        text, raw = request.get("text"), request.get("workloads")
        if not isinstance(text, str):
            self.counters.inc("bad_requests")
            return error_reply("compile needs 'text': the candidate policies' YAML or JSON", "text")
        if not isinstance(raw, list) or len(raw) > MAX_COMPILE_WORKLOADS:
            self.counters.inc("bad_requests")
            return error_reply(f"compile needs 'workloads': a list of at most {MAX_COMPILE_WORKLOADS}", "workloads")
        try:
            posture = parse_posture_spec(str(request.get("default_posture") or ""), self.publisher.default_posture)
        except ValueError as exc:
            return error_reply(str(exc), "default_posture")
        try:
            workloads = [Workload.from_wire(w) for w in raw]
        except DecodeError as exc:
            return error_reply(str(exc), "workloads")
        errors: list[FieldError] = []
        candidate: list[Policy] = []
        try:
            docs = parse_documents(text, "candidate")
        except ValidationFailed as exc:
            docs, errors = [], list(exc.errors)
        for label, doc in docs:
            try:
                candidate.append(to_policy(admit(doc, label).doc))
            except ValidationFailed as exc:
                errors.extend(exc.errors)
        if not errors and not candidate:
            errors.append(FieldError("", "no policy documents found", "candidate"))
        if errors:
            return {"ok": False, "errors": _errors(errors)}
        keys = {p.key for p in candidate}
        kept = [p for p in self.store.policies() if p.key not in keys] if request.get("applied", True) else []
        ruleset = compile_rules(kept + candidate, workloads, "rehearse", default_posture=posture)
        return {"ok": True, "errors": [],
                "workloads": {k: wr.to_wire() for k, wr in ruleset.workloads.items()}}

    def list(self) -> dict[str, Any]:
        """Every stored policy: applied (with the workloads it selects now, and warnings: what its Block
        presets do where nothing can block them, what its rules ask that Bulwark cannot fully do) or
        invalid (with why)."""
        running = self.workloads.all()
        out = []
        for (kind, namespace, name), stored in sorted(self.store.items.items()):
            policy = stored.policy
            chosen = sorted({wl.name for wl in running if selects(policy, wl)}) if policy is not None else []
            spec = stored.doc.get("spec")
            spec = spec if isinstance(spec, dict) else {}
            warnings = [f"{w.path}: {w.message}" for w in status_warnings(spec)] if policy is not None else []
            out.append({"kind": kind, "namespace": namespace, "name": name, "status": stored.status,
                        "reason": stored.error, "selects": chosen, "policy_seq": stored.seq,
                        "spec": spec, "warnings": warnings})
        return {"ok": True, "policies": out}
