"""KubeArmor's own wire through a real feeder and real grpcio clients (issue 15 item 4): EventData from
Data (and Resource for network records), ExecEvent, throttling notices as KubeArmor Messages on
WatchMessages, and ProbeService.getProbeData answering with the node's enforcers.

Before: EventData held only EventID, WatchMessages sent ``Type: SystemEvent`` records without HostIP or
KubeArmor's Level, and getProbeData was UNIMPLEMENTED.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import httpx
from google.protobuf import empty_pb2

from services.feeder.grpc_api.server import node_ip
from shared.codec import pack
from shared.nats.subjects import health, raw_events
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc
from shared.proto_gen import policy_pb2_grpc as ppb_grpc
from shared.schemas import RawBatch, RawEvent, Rule, RuleSet, Workload, WorkloadRules
from tests.integration.test_feeder_live import _beats, _events, _setup
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, _until, _workload

AUDITED_MNTNS = 4026532991


def _file_ruleset() -> RuleSet:
    rule = Rule(policy="block-shadow", policy_kind="KubeArmorPolicy", policy_namespace="demo", operation="File",
                action="Block", severity=5, path="/etc/shadow")
    wr = WorkloadRules(workload_id="cid-1234", mntns=MNTNS, pidns=PIDNS, rules=[rule])
    return RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1, workloads={"cid-1234": wr})


def _raw(kind: str, syscall: str, path: str, event_id: str, ret: int, **extra: Any) -> dict[str, Any]:
    return RawEvent(kind=kind, ts_ns=time.time_ns(), node=NODE, pid=8100, tid=8100, ppid=1, ns_pid=9, ns_ppid=1,
                    uid=0, gid=0, mntns=MNTNS, pidns=PIDNS, cgroup_id=1, comm="cat", exe="/usr/bin/cat", path=path,
                    ret=ret, syscall=syscall, cwd="/", event_id=event_id, extra=extra).to_wire()


async def test_event_data_is_filled_from_data_and_network_resource(nats_server: Any, make_feeder: Any) -> None:
    feeder = await make_feeder()
    nc, js = await _setup(nats_server.url, _file_ruleset())
    beats = await _beats(nc)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    stub = pb_grpc.LogServiceStub(channel)
    alerts_call = stub.WatchAlerts(pb.RequestMessage(Filter="policy"))
    logs_call = stub.WatchLogs(pb.RequestMessage(Filter="system"))
    await _until(lambda: beats and beats[-1].get("watchers") == 2, 5, "watchers")
    events = [_raw("open", "openat", "/etc/shadow", "wire-file", -13, dirfd=-100),
              _raw("network", "socket", "", "wire-net", 3, family="AF_INET", type="SOCK_STREAM", protocol="TCP", fd=3)]
    await js.publish(raw_events(NODE), pack(RawBatch(node=NODE, seq=1, events=events).to_wire()))
    alert = await asyncio.wait_for(alerts_call.read(), 10)
    assert (alert.PolicyName, alert.Data) == ("block-shadow", "syscall=SYS_OPENAT fd=-100 flags=O_RDONLY")
    assert dict(alert.EventData) == {"Syscall": "SYS_OPENAT", "Fd": "-100", "Flags": "O_RDONLY",
                                     "EventID": "wire-file"}
    assert alert.HasField("ExecEvent") and alert.ExecEvent.ExecutableName == "cat"
    got = await asyncio.wait_for(logs_call.read(), 10)
    while got.Operation != "Network":
        got = await asyncio.wait_for(logs_call.read(), 10)
    assert (got.Resource, got.Data) == ("domain=AF_INET type=SOCK_STREAM protocol=TCP", "syscall=SYS_SOCKET fd=3")
    assert dict(got.EventData) == {"Syscall": "SYS_SOCKET", "Fd": "3", "Domain": "AF_INET", "Type": "SOCK_STREAM",
                                   "Protocol": "TCP", "EventID": "wire-net"}
    async with httpx.AsyncClient(base_url=feeder.base) as http:  # the stored record carries it too
        stored = (await http.get("/api/v1/alerts", params={"policy": "block-shadow"})).json()
        assert stored[0]["EventData"] == {"Syscall": "SYS_OPENAT", "Fd": "-100", "Flags": "O_RDONLY"}
        assert stored[0]["ExecEvent"] == {"ExecID": "", "ExecutableName": "cat"}
    alerts_call.cancel()
    logs_call.cancel()
    await channel.close()
    await nc.close()


async def test_throttle_notice_is_a_kubearmor_message(nats_server: Any, make_feeder: Any) -> None:
    feeder = await make_feeder(BULWARK_MAX_ALERTS_PER_SEC="5", BULWARK_THROTTLE_SEC="1")
    nc, js = await _setup(nats_server.url)
    beats = await _beats(nc)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    messages = pb_grpc.LogServiceStub(channel).WatchMessages(pb.RequestMessage(Filter="all"))
    await _until(lambda: beats and beats[-1].get("watchers") == 1, 5, "message watcher")
    await js.publish(raw_events(NODE), _events(20))
    start = await asyncio.wait_for(messages.read(), 10)
    assert (start.Type, start.Level, start.HostName, start.ClusterName) == ("Message", "WARN", NODE, "default")
    assert start.HostIP == node_ip() and start.HostIP  # no BULWARK_NODE_IP: the default route's, or 127.0.0.1
    assert "threshold" in start.Message and "demo/web-0" in start.Message
    assert start.Timestamp > 0 and start.UpdatedTime.endswith("Z")
    end = await asyncio.wait_for(messages.read(), 10)  # after the quiet second
    assert (end.Type, end.Level) == ("Message", "WARN")
    messages.cancel()
    await channel.close()
    await nc.close()


async def test_node_ip_setting_is_the_host_ip(nats_server: Any, make_feeder: Any) -> None:
    feeder = await make_feeder(BULWARK_MAX_ALERTS_PER_SEC="1", BULWARK_THROTTLE_SEC="1", BULWARK_NODE_IP="192.0.2.44")
    nc, js = await _setup(nats_server.url)
    beats = await _beats(nc)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    messages = pb_grpc.LogServiceStub(channel).WatchMessages(pb.RequestMessage(Filter="all"))
    await _until(lambda: beats and beats[-1].get("watchers") == 1, 5, "message watcher")
    await js.publish(raw_events(NODE), _events(3))
    assert (await asyncio.wait_for(messages.read(), 10)).HostIP == "192.0.2.44"
    messages.cancel()
    await channel.close()
    await nc.close()


async def test_probe_data_names_containers_policies_and_the_node_enforcers(nats_server: Any,
                                                                         make_feeder: Any) -> None:
    feeder = await make_feeder()
    audited = Workload(id="cid-audit", name="audited", namespace="demo", kind="container", node=NODE,
                       mntns=AUDITED_MNTNS, pidns=PIDNS, annotations={"kubearmor-policy": "audited"})
    rs = _file_ruleset()
    rs.workloads["cid-audit"] = WorkloadRules(workload_id="cid-audit", mntns=AUDITED_MNTNS, pidns=PIDNS,
                                              rules=[], audited=True)
    nc, _js = await _setup(nats_server.url, rs, [_workload(), audited])
    details = {"enforcer": "BPFLSM", "enforcers": {"Process": "BPFLSM", "File": "BPFLSM", "Network": "BPFLSM"},
               "active": "bpflsm"}  # what services.enforcer's heartbeat sends
    await nc.publish(health("enforcer", NODE), pack({"service": "enforcer", "node": NODE, "ts_ns": time.time_ns(),
                                                     "status": "ok", "details": details}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}") as channel:
        stub = ppb_grpc.ProbeServiceStub(channel)
        replies: list[Any] = []

        async def probed() -> bool:
            replies.append(await stub.getProbeData(empty_pb2.Empty(), timeout=10))
            node = replies[-1].nodeMap.get(NODE)
            return node is not None and node.enforcer == "BPFLSM" and "web" in replies[-1].containerMap

        await _until(probed, 10, "the enforcer's heartbeat and the rules in getProbeData")
        reply = replies[-1]
    assert list(reply.containerList) == ["audited", "web"]
    web = reply.containerMap["web"]
    assert (list(web.policyList), web.policyEnabled) == (["block-shadow"], 1)
    assert reply.containerMap["audited"].policyEnabled == 2
    assert NODE in reply.hostMap
    node = reply.nodeMap[NODE]
    assert (node.enforcer, node.active, dict(node.enforcers)) == ("BPFLSM", "bpflsm", details["enforcers"])
    assert node.services["enforcer"] == "ok" and node.services["feeder"]
    await nc.close()
