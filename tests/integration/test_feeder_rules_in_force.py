"""The feeder judges an access by the rules the node's enforcer had in force when it happened (real
nats-server, real feeder process, real SQLite): a late monitor record of an exec that passed before a
Block rule was in force is a log, not a breach of that rule (``Block`` with Result ``Passed``); the
same exec after the rule came into force is one; a refused exec is judged by the newest rules."""
from __future__ import annotations

import time
from typing import Any

import httpx

from shared.codec import pack
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import health, identity_events, raw_events, rules_for_node
from shared.schemas import IdentityEvent, RawBatch, RawEvent
from shared.schemas.rules import RuleSet, WorkloadRules
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, Feeder, _ruleset, _until, _workload

SECOND = 1_000_000_000


def _exec(ts_ns: int, event_id: str, ret: int = 0) -> dict[str, Any]:
    return RawEvent(kind="exec", ts_ns=ts_ns, node=NODE, pid=5000, tid=5000, ppid=4999, ns_pid=12, ns_ppid=1,
                    uid=0, gid=0, mntns=MNTNS, pidns=PIDNS, cgroup_id=1, comm="sh", exe="/usr/bin/dash",
                    path="/usr/bin/sleep", ret=ret, syscall="execve", cwd="/", event_id=event_id).to_wire()


async def test_a_late_record_is_judged_by_the_rules_in_force_when_it_happened(nats_server: Any,
                                                                              make_feeder: Any) -> None:
    feeder: Feeder = await make_feeder()
    blocking = _ruleset()
    blocking.version = 2
    entry = WorkloadRules(workload_id=blocking.workloads["cid-1234"].workload_id, mntns=MNTNS, pidns=PIDNS)
    open_rules = RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1, workloads={entry.workload_id: entry})
    now = time.time_ns()
    in_force_since = now - 60 * SECOND  # the Block rule came into force a minute ago
    nc = await connect(nats_server.url, "test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), now - 600 * SECOND)
                                                     .to_wire()))
        for rs in (open_rules, blocking):
            await js.publish(rules_for_node(NODE), pack(rs.to_wire()))
        beat = {"service": "enforcer", "node": NODE, "status": "ok",
                "details": {"enforcer": "eBPF Signal", "in_force": [[1, now - 300 * SECOND], [2, in_force_since]]}}
        await nc.publish(health("enforcer", NODE), pack(beat))
        async with httpx.AsyncClient(base_url=feeder.base, timeout=5) as http:
            async def enforcer_heard() -> bool:
                return NODE in (await http.get("/healthz")).json()["services"]["enforcer"]["nodes"]

            await _until(enforcer_heard, 20.0, "the enforcer's heartbeat at the feeder")

            async def alert_ids() -> set[str]:
                return {a["EventID"] for a in (await http.get("/api/v1/alerts", params={"namespace": "demo"})).json()}

            async def log_ids() -> set[str]:
                return {r["EventID"] for r in (await http.get("/api/v1/logs", params={"namespace": "demo"})).json()}

            # a record from after the rule came into force: the newest rules are known to the feeder
            await js.publish(raw_events(NODE), pack(RawBatch(node=NODE, seq=1, events=[
                _exec(now - SECOND, "after")]).to_wire()))

            async def after_alerted() -> bool:
                return "after" in await alert_ids()

            await _until(after_alerted, 20.0, "the alert of an exec after the rule was in force")
            # late records, from before the rule was in force: one went through, one was refused
            await js.publish(raw_events(NODE), pack(RawBatch(node=NODE, seq=2, events=[
                _exec(in_force_since - SECOND, "before"), _exec(in_force_since - SECOND, "refused", ret=-1),
            ]).to_wire()))

            async def both_stored() -> bool:
                return "before" in await log_ids() and "refused" in await alert_ids()

            await _until(both_stored, 20.0, "the late records stored")
            alerts = {a["EventID"]: a for a in (await http.get("/api/v1/alerts",
                                                                params={"namespace": "demo"})).json()}
            assert "before" not in alerts
            assert (alerts["after"]["Action"], alerts["after"]["Result"]) == ("Block", "Passed")
            assert alerts["refused"]["Action"] == "Block" and alerts["refused"]["Result"] != "Passed"
    finally:
        await nc.close()
