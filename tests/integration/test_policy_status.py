"""Policy status and postures through the real policy service and nats-server.

A document stored on the policy log that no longer validates is listed as invalid with the reason
and compiles to nothing; valid ones are applied and list the workloads they select. Compiled
RuleSets carry the postures (settings + namespace annotations) and the audited flag, and the
stream sequences they were compiled from.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shared.codec import pack, unpack
from shared.errors import ServiceUnavailable
from shared.matcher import Access, decide
from shared.nats.bus import connect, ensure_streams, request
from shared.nats.subjects import POLICY_API, POLICY_EVENTS, RULES, identity_events, rules_for_node
from shared.schemas.identity import IdentityEvent, Workload
from shared.schemas.rules import RuleSet
from tests.servicetools import eventually, service_log, start_service, stop_service

NODE = "status-node"
ALLOW_NGINX = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: only-nginx, namespace: web}
spec:
  selector: {matchLabels: {app: nginx}}
  process:
    matchPaths: [{path: /usr/sbin/nginx}, {path: /bin/sleep, action: Block}]
  action: Allow
"""
BROKEN = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
          "metadata": {"name": "broken", "namespace": "web"},
          "spec": {"severity": 42, "selector": {"matchLabels": {"app": "nginx"}},
                   "process": {"matchPaths": [{"path": "/bin/sh"}]}}}


def wl(id: str, notes: dict[str, str], ns_notes: dict[str, str]) -> Workload:
    return Workload(id=id, name=id, namespace="web", kind="container", node=NODE, mntns=4026500000 + len(id),
                    pidns=4026531836, labels={"app": "nginx"}, annotations=notes, namespace_annotations=ns_notes,
                    started_ns=time.time_ns())


async def test_status_postures_and_versions(nats_server, tmp_path: Path) -> None:
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    # Written straight onto the log (as an older version might have): invalid today.
    broken_seq = (await js.publish(POLICY_EVENTS, pack({"type": "ADDED", "object": BROKEN, "ts_ns": 1}))).seq
    for event in (IdentityEvent("started", wl("plain", {}, {}), 1),
                  IdentityEvent("started", wl("strict", {}, {"kubearmor-file-posture": "block"}), 2),
                  IdentityEvent("started", wl("watched", {"kubearmor-policy": "audited"}, {}), 3)):
        await js.publish(identity_events(NODE), pack(event.to_wire()))
    proc = start_service("policy", nats_server.url, tmp_path, node="policy-host",
                         BULWARK_DEFAULT_NETWORK_POSTURE="block")
    try:
        async def ready() -> bool:
            try:
                await request(nc, POLICY_API, {"op": "list"}, timeout=0.5)
                return True
            except ServiceUnavailable:
                return False

        assert await eventually(ready, timeout=20), service_log(tmp_path, "policy")
        reply = await request(nc, POLICY_API, {"op": "apply", "text": ALLOW_NGINX}, timeout=5)
        assert reply["ok"], reply

        listed = {p["name"]: p for p in (await request(nc, POLICY_API, {"op": "list"}, timeout=5))["policies"]}
        assert listed["broken"]["status"] == "invalid" and listed["broken"]["selects"] == []
        assert "spec.severity: must be at most 10, got 42" in listed["broken"]["reason"]
        assert listed["broken"]["policy_seq"] == broken_seq
        assert listed["only-nginx"]["status"] == "applied" and listed["only-nginx"]["reason"] == ""
        assert listed["only-nginx"]["selects"] == ["plain", "strict", "watched"]

        async def compiled() -> RuleSet | None:
            try:
                msg = await js.get_last_msg(RULES.name, rules_for_node(NODE))
            except Exception:
                return None
            rs = RuleSet.from_wire(unpack(msg.data))
            return rs if rs.workloads.get("plain") and rs.workloads["plain"].rules else None

        rs = await eventually(compiled, timeout=5)
        assert rs is not None, service_log(tmp_path, "policy")
        assert rs.policy_seq > broken_seq and rs.identity_seq >= 3
        plain, strict, watched = (rs.workloads[k] for k in ("plain", "strict", "watched"))
        assert all(r.policy == "only-nginx" for r in plain.rules)  # the invalid one compiles to nothing
        assert (plain.file_posture, plain.network_posture, plain.audited) == ("audit", "block", False)
        assert (strict.file_posture, watched.audited) == ("block", True)
        bash = Access("Process", "/bin/bash", access="exec")
        verdicts: list[Any] = [decide(w, bash) for w in (plain, strict, watched)]
        assert [(d.action, d.policy) for d in verdicts] == [
            ("Audit", "DefaultPosture"), ("Block", "DefaultPosture"), ("Audit", "DefaultPosture")]
        assert decide(watched, Access("Process", "/bin/sleep")).action == "Audit (Block)"
    finally:
        stop_service(proc)
        await nc.close()
