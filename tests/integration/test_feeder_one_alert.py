"""One operation, one alert (real nats-server, real feeder process, real SQLite): a read the BPF-LSM
enforcer refused reaches the feeder twice, as the monitor's record of the failed syscall and as the
enforcer's report of its refusal, in either order; the feeder stores one alert. So does an AppArmor
report (the monitor's kinds, the enforcer named in ``extra``). Two refusals are two alerts, and
a refusal of another file by the same thread is its own alert."""
from __future__ import annotations

import time
from typing import Any

import httpx

from shared.codec import pack
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import identity_events, raw_events, rules_for_node
from shared.schemas import IdentityEvent, RawBatch, RawEvent
from shared.schemas.rules import Rule, RuleSet, WorkloadRules
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, Feeder, _until, _workload

MS = 1_000_000


def _rules() -> RuleSet:
    rule = Rule(policy="block-secrets", policy_kind="KubeArmorPolicy", policy_namespace="demo", operation="File",
                action="Block", severity=5, message="secrets", dir="/etc/secret/", recursive=True)
    wr = WorkloadRules(workload_id="cid-1234", mntns=MNTNS, pidns=PIDNS, rules=[rule])
    return RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1, workloads={"cid-1234": wr})


def _event(kind: str, tid: int, ts_ns: int, path: str, event_id: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if kind == "apparmor":   # AppArmor's report: the monitor's kind, its enforcer named
        kind, extra = "file", {"enforcer": "AppArmor", "result": "Permission denied", "apparmor": "DENIED"}
    if kind == "enforce":
        extra = {"operation": "File", "match": path, "enforcer": "BPFLSM", "refused": True, "killed": False,
                 "access": "read", "owner": False}
    return RawEvent(kind=kind, ts_ns=ts_ns, node=NODE, pid=tid, tid=tid, ppid=4999, ns_pid=12, ns_ppid=1,
                    uid=0, gid=0, mntns=MNTNS, pidns=PIDNS, cgroup_id=1, comm="cat", exe="/usr/bin/cat",
                    path=path, ret=-1, syscall="openat" if kind == "file" else "", cwd="/", flags=0,
                    event_id=event_id, extra=extra).to_wire()


async def test_a_refusal_seen_by_monitor_and_enforcer_is_one_alert(nats_server: Any, make_feeder: Any) -> None:
    feeder: Feeder = await make_feeder()
    now = time.time_ns()
    nc = await connect(nats_server.url, "test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), now - 600 * 10**9)
                                                     .to_wire()))
        await js.publish(rules_for_node(NODE), pack(_rules().to_wire()))
        key, other = "/etc/secret/key", "/etc/secret/other"
        batches = [
            [_event("file", 7001, now, key, "m1")], [_event("enforce", 7001, now - MS, key, "e1")],   # monitor first
            [_event("enforce", 7002, now, key, "e2")], [_event("file", 7002, now + MS, key, "m2")],   # enforcer first
            [_event("file", 7003, now, key, "m3a"), _event("file", 7003, now + 5 * MS, key, "m3b")],  # two acts
            [_event("file", 7004, now, key, "m4"), _event("enforce", 7004, now, other, "e4")],        # two files
            [_event("file", 7005, now, key, "m5")], [_event("apparmor", 7005, now + MS, key, "a5")],  # AppArmor's
            [_event("file", 7006, now, key, "m6")],   # last: batches are judged in order
        ]
        for seq, events in enumerate(batches, 1):
            await js.publish(raw_events(NODE), pack(RawBatch(node=NODE, seq=seq, events=events).to_wire()))
        async with httpx.AsyncClient(base_url=feeder.base, timeout=5) as http:
            async def alerts() -> list[dict[str, Any]]:
                return list((await http.get("/api/v1/alerts", params={"namespace": "demo"})).json())

            async def last_batch_in() -> bool:
                return "m6" in {a["EventID"] for a in await alerts()}

            await _until(last_batch_in, 20.0, "the last batch's alerts")
            by_tid: dict[int, list[str]] = {}
            for a in await alerts():
                by_tid.setdefault(a["HostPID"], []).append(a["EventID"])
        assert sorted(by_tid[7001]) == ["m1"] and sorted(by_tid[7002]) == ["e2"]
        assert sorted(by_tid[7003]) == ["m3a", "m3b"] and sorted(by_tid[7004]) == ["e4", "m4"]
        assert by_tid[7005] == ["m5"]
    finally:
        await nc.close()
