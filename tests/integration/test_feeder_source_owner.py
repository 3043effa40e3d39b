"""Through a real feeder (real nats-server, SQLite): a File record's Source is the acting command line
while fromSource still matches its executable, and an ownerOnly Process rule lets the program's owner
run it (a log) but alerts on anyone else (KubeArmor's multiubuntu_test_15 and cluster_policy_test_2)."""
from __future__ import annotations

import time
from typing import Any

import httpx

from shared.codec import pack
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import identity_events, raw_events, rules_for_node
from shared.schemas import IdentityEvent, RawBatch, RawEvent, Rule, RuleSet, WorkloadRules
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, Feeder, _until, _workload

HELLO = "/home/user1/hello"


def _rules() -> RuleSet:
    def rule(**kw: Any) -> Rule:
        return Rule(policy=kw.pop("policy"), policy_kind="KubeArmorPolicy", policy_namespace="demo",
                    action="Block", severity=7, **kw)

    owner_only = rule(policy="block-hello-but-owner", operation="Process", path=HELLO, owner_only=True)
    # a Block of /etc/shadow for any program but cat: cat's opens are not this rule's business
    shadow = rule(policy="shadow-but-cat", operation="File", path="/etc/shadow")
    cat_allowed = Rule(policy="shadow-but-cat", policy_kind="KubeArmorPolicy", policy_namespace="demo",
                       action="Allow", severity=7, operation="File", path="/etc/shadow",
                       from_source=[{"path": "/usr/bin/cat"}])
    wr = WorkloadRules(workload_id="cid-1234", mntns=MNTNS, pidns=PIDNS, rules=[owner_only, shadow, cat_allowed])
    return RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1, workloads={"cid-1234": wr})


def _event(event_id: str, kind: str, path: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(kind=kind, ts_ns=time.time_ns(), node=NODE, pid=5000, tid=5000, ppid=4999,
                                ns_pid=12, ns_ppid=1, uid=1000, gid=1000, mntns=MNTNS, pidns=PIDNS, cgroup_id=1,
                                comm="x", exe="/usr/bin/bash", path=path, ret=0, cwd="/", event_id=event_id)
    base.update(kw)
    return RawEvent(**base).to_wire()


async def test_source_is_the_command_line_and_owners_run_their_programs(nats_server: Any,
                                                                        make_feeder: Any) -> None:
    feeder: Feeder = await make_feeder()
    nc = await connect(nats_server.url, "test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(),
                                                                   time.time_ns() - 10**9).to_wire()))
        await js.publish(rules_for_node(NODE), pack(_rules().to_wire()))
        events = [
            _event("cat-shadow", "file", "/etc/shadow", syscall="openat", exe="/usr/bin/cat",
                   proc_args="/etc/shadow", extra={"owner_uid": 0}),
            _event("owner-runs", "exec", HELLO, syscall="execve", extra={"owner_uid": 1000}),
            _event("root-runs", "exec", HELLO, syscall="execve", uid=0, gid=0, ret=-1, extra={"owner_uid": 1000}),
        ]
        await js.publish(raw_events(NODE), pack(RawBatch(node=NODE, seq=1, events=events).to_wire()))
        async with httpx.AsyncClient(base_url=feeder.base, timeout=5) as http:
            async def records(table: str) -> dict[str, dict[str, Any]]:
                got = (await http.get(f"/api/v1/{table}", params={"namespace": "demo"})).json()
                return {r["EventID"]: r for r in got}

            async def all_stored() -> bool:
                logs, alerts = await records("logs"), await records("alerts")
                return {"cat-shadow", "owner-runs"} <= set(logs) and "root-runs" in alerts

            await _until(all_stored, 20.0, "the three records stored")
            logs, alerts = await records("logs"), await records("alerts")
            assert set(alerts) == {"root-runs"}
            cat = logs["cat-shadow"]
            assert (cat["Source"], cat["ProcessName"], cat["Resource"]) == (
                "/usr/bin/cat /etc/shadow", "/usr/bin/cat", "/etc/shadow")
            owner = logs["owner-runs"]
            assert (owner["Resource"], owner["Result"], owner["Source"]) == (HELLO, "Passed", "/usr/bin/bash")
            root = alerts["root-runs"]
            assert (root["PolicyName"], root["Action"], root["Result"]) == (
                "block-hello-but-owner", "Block", "Operation not permitted")
    finally:
        await nc.close()
