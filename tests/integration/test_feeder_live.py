"""The feeder process live: throttling notices, logs by visibility, dead letters kept on a stream,
slow gRPC watchers that miss records are told so, PolicyService over TLS."""
from __future__ import annotations

import asyncio
import datetime
import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from shared.codec import pack, unpack
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import POLICY_API, health, identity_events, raw_events, rules_for_node
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc
from shared.proto_gen import policy_pb2 as ppb
from shared.proto_gen import policy_pb2_grpc as ppb_grpc
from shared.schemas import IdentityEvent, RawBatch, RawEvent, Rule, RuleSet, Workload, WorkloadRules
from tests.integration.test_feeder_pipeline import MNTNS, NODE, PIDNS, _ruleset, _until, _workload

QUIET_MNTNS = 4026532999


def _events(n: int, *, path: str = "/usr/bin/sleep", mntns: int = MNTNS, prefix: str = "ev") -> bytes:
    now = time.time_ns()
    evs = [RawEvent(kind="exec", ts_ns=now + k * 1_000_000, node=NODE, pid=7000 + k, tid=7000 + k, ppid=1, ns_pid=k,
                    ns_ppid=1, uid=0, gid=0, mntns=mntns, pidns=PIDNS, cgroup_id=1, comm="sh", exe="/usr/bin/dash",
                    path=path, ret=-1, syscall="execve", event_id=f"{prefix}-{k}").to_wire() for k in range(n)]
    return pack(RawBatch(node=NODE, seq=1, events=evs).to_wire())


async def _setup(url: str, ruleset: RuleSet | None = None, workloads: list[Workload] | None = None) -> Any:
    nc = await connect(url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    for wl in workloads or [_workload()]:
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", wl, time.time_ns()).to_wire()))
    await js.publish(rules_for_node(NODE), pack((ruleset or _ruleset()).to_wire()))
    return nc, js


async def _beats(nc: Any) -> list[dict[str, Any]]:
    beats: list[dict[str, Any]] = []

    async def on_beat(msg: Any) -> None:
        beats.append(unpack(msg.data)["details"])

    await nc.subscribe(health("feeder", NODE), cb=on_beat)
    return beats


async def test_throttling_stores_everything_pushes_the_first_and_announces(nats_server: Any, make_feeder: Any) -> None:
    feeder = await make_feeder(BULWARK_MAX_ALERTS_PER_SEC="5", BULWARK_THROTTLE_SEC="1")
    nc, js = await _setup(nats_server.url)
    beats = await _beats(nc)
    ws = await ws_connect(f"ws://127.0.0.1:{feeder.rest_port}/api/v1/stream")
    await _until(lambda: beats and beats[-1].get("watchers") == 1, 5, "ws watcher")
    await js.publish(raw_events(NODE), _events(20))
    got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(6)]
    notice = next(m for m in got if m["Type"] == "SystemEvent")
    assert (notice["Operation"], notice["MaxAlertsPerSec"], notice["DroppingAlertsInterval"]) == \
        ("AlertThreshold", 5, 1)
    assert notice["ContainerID"] == "cid-1234" and "threshold" in notice["Message"]
    assert [m["EventID"] for m in got if m["Type"] != "SystemEvent"] == [f"ev-{k}" for k in range(5)]
    end = json.loads(await asyncio.wait_for(ws.recv(), 5))  # after the quiet second
    assert (end["Type"], end["Operation"], end["ThrottledAlerts"]) == ("SystemEvent", "AlertThreshold", 15)
    async with httpx.AsyncClient(base_url=feeder.base) as http:
        stored = (await http.get("/api/v1/alerts", params={"policy": "block-sleep", "limit": 100})).json()
        assert len(stored) == 20
        held = (await http.get("/api/v1/alerts", params={"throttled": "true"})).json()
        assert sorted(a["EventID"] for a in held) == sorted(f"ev-{k}" for k in range(5, 20))
        assert all(a["Throttled"] for a in held)
        notices = (await http.get("/api/v1/alerts", params={"type": "SystemEvent"})).json()
        assert len(notices) == 2
    await _until(lambda: beats[-1].get("throttled") == 15, 3, "throttled counted in the heartbeat")
    await ws.close()
    await nc.close()


async def test_unmatched_events_are_logs_when_visible(nats_server: Any, make_feeder: Any) -> None:
    feeder = await make_feeder()
    quiet = Workload(id="cid-quiet", name="quiet", namespace="hush", kind="container", node=NODE, mntns=QUIET_MNTNS,
                     pidns=PIDNS, namespace_annotations={"kubearmor-visibility": "none"})
    visible = Workload(id="cid-1234", name="web", namespace="demo", kind="container", node=NODE, mntns=MNTNS,
                       pidns=PIDNS, labels={"app": "web"}, pod="web-0",
                       namespace_annotations={"kubearmor-visibility": "process,file"})
    rs = _ruleset()
    rs.workloads["cid-quiet"] = WorkloadRules(workload_id="cid-quiet", mntns=QUIET_MNTNS, pidns=PIDNS, rules=[])
    nc, js = await _setup(nats_server.url, rs, [visible, quiet])
    beats = await _beats(nc)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    stub = pb_grpc.LogServiceStub(channel)
    logs_call = stub.WatchLogs(pb.RequestMessage(Filter="system"))
    ws = await ws_connect(f"ws://127.0.0.1:{feeder.rest_port}/api/v1/stream?stream=logs&namespace=demo")
    await _until(lambda: beats and beats[-1].get("watchers") == 2, 5, "watchers")
    sub = await js.subscribe("bulwark.logs.demo.>", ordered_consumer=True)
    await js.publish(raw_events(NODE), _events(1, path="/usr/bin/ls", prefix="vis"))
    await js.publish(raw_events(NODE), _events(1, path="/usr/bin/ls", mntns=QUIET_MNTNS, prefix="quiet"))
    await js.publish(raw_events(NODE), _events(1, path="/usr/bin/ls", mntns=12345, prefix="host"))
    from_ws = json.loads(await asyncio.wait_for(ws.recv(), 5))
    from_grpc = await asyncio.wait_for(logs_call.read(), 5)
    siem = await sub.next_msg(timeout=5)
    assert (from_ws["Type"], from_ws["EventID"], from_ws["Operation"]) == ("ContainerLog", "vis-0", "Process")
    assert "PolicyName" not in from_ws and "Action" not in from_ws
    assert (from_grpc.Type, from_grpc.Resource, from_grpc.NamespaceName) == ("ContainerLog", "/usr/bin/ls", "demo")
    assert siem.subject == "bulwark.logs.demo.Process" and json.loads(siem.data)["EventID"] == "vis-0"
    await _until(lambda: beats[-1].get("not_visible") == 2 and beats[-1].get("logs") == 1, 5, "quiet events counted")
    async with httpx.AsyncClient(base_url=feeder.base) as http:
        assert [r["EventID"] for r in (await http.get("/api/v1/logs")).json()] == ["vis-0"]
        assert (await http.get("/api/v1/alerts")).json() == []
    logs_call.cancel()
    await ws.close()
    await channel.close()
    await nc.close()


async def test_dead_letters_persist_and_the_feeder_keeps_going(nats_server: Any, make_feeder: Any) -> None:
    feeder = await make_feeder()
    nc, js = await _setup(nats_server.url)
    await js.publish(raw_events(NODE), b"\x92 not a batch")
    await js.publish(raw_events(NODE), pack({"node": NODE, "seq": 1, "events": [{"kind": "exec"}]}))
    await js.publish(raw_events(NODE), _events(1, prefix="ok"))
    async with httpx.AsyncClient(base_url=feeder.base) as http:
        async def one() -> bool:
            return len((await http.get("/api/v1/alerts")).json()) == 1

        await _until(one, 5, "the good batch's alert")
    info = await js.stream_info("BULWARK_DEADLETTER")
    assert info.state.messages == 2
    first = await js.get_msg("BULWARK_DEADLETTER", info.state.first_seq)
    assert first.data == b"\x92 not a batch" and first.headers["Bulwark-Subject"] == raw_events(NODE)
    assert "Bulwark-Reason" in first.headers
    await nc.close()


async def test_a_slow_grpc_watcher_is_told_what_it_missed(nats_server: Any, make_feeder: Any) -> None:
    long_path = "/opt/" + "x" * 3000
    rule = Rule(policy="long", policy_kind="KubeArmorPolicy", policy_namespace="demo", operation="Process",
                action="Block", severity=3, path=long_path)
    rs = RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1,
                 workloads={"cid-1234": WorkloadRules("cid-1234", MNTNS, PIDNS, [rule])})
    feeder = await make_feeder(BULWARK_ALERT_THROTTLING="false", BULWARK_GRPC_QUEUE="16")
    nc, js = await _setup(nats_server.url, rs)
    beats = await _beats(nc)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    stub = pb_grpc.LogServiceStub(channel)
    fast_call = stub.WatchAlerts(pb.RequestMessage(Filter="all"))
    slow_call = stub.WatchAlerts(pb.RequestMessage(Filter="policy"))
    await _until(lambda: beats and beats[-1].get("watchers") == 2, 5, "watchers")
    fast: list[pb.Alert] = []

    async def read_fast() -> None:
        async for a in fast_call:
            fast.append(a)

    def accounted(alerts: list[pb.Alert]) -> tuple[int, int]:
        """(alerts received, alerts the notices among them say were dropped)."""
        notices = [a for a in alerts if a.Type == "SystemEvent"]
        assert all(n.Message.startswith("dropped ") for n in notices)
        return len(alerts) - len(notices), sum(int(n.EventData["Dropped"]) for n in notices)

    reader = asyncio.create_task(read_fast())
    total = 1200
    for b in range(0, total, 4):  # small batches, so that the fast watcher mostly keeps up with its queue of 16
        await js.publish(raw_events(NODE), _events(4, path=long_path, prefix=f"b{b}"))
        await asyncio.sleep(0.01)
    # How much each watcher receives depends on scheduling; that every alert is received or announced does not.
    await _until(lambda: sum(accounted(fast)) == total, 120, "every alert on the fast watcher, or its drop notice")
    slow: list[pb.Alert] = []
    while sum(accounted(slow)) < total:  # it never read: its queue of 16 overflowed
        slow.append(await asyncio.wait_for(slow_call.read(), 60))
    (fast_got, fast_missed), (slow_got, slow_missed) = accounted(fast), accounted(slow)
    assert fast_got + fast_missed == total and slow_got + slow_missed == total and slow_missed > 0
    await _until(lambda: beats[-1].get("dropped_grpc", 0) == fast_missed + slow_missed, 30, "drops counted")
    reader.cancel()
    slow_call.cancel()
    await channel.close()
    await nc.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_policy_service_over_tls(nats_server: Any, make_feeder: Any, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    feeder = await make_feeder(BULWARK_GRPC_TLS_CERT=str(cert), BULWARK_GRPC_TLS_KEY=str(key))
    nc = await connect(nats_server.url, "fake-policy")
    seen: list[dict[str, Any]] = []

    async def policy(msg: Any) -> None:
        req = unpack(msg.data)
        seen.append(req)
        if req["op"] == "apply":
            doc = json.loads(req["text"])
            status = "configured" if doc["metadata"]["name"] == "again" else "created"
            reply = {"ok": "spec" in doc, "results": [{"status": status}], "errors": []}
        else:
            reply = {"ok": True, "found": req["name"] == "p"}
        await msg.respond(pack(reply))

    await nc.subscribe(POLICY_API, cb=policy)
    await nc.flush()
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{feeder.grpc_port}", creds) as channel:
        assert (await pb_grpc.LogServiceStub(channel).HealthCheck(pb.NonceMessage(nonce=7))).Retval == 7
        stub = ppb_grpc.PolicyServiceStub(channel)

        async def call(rpc: str, body: Any) -> int:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return (await getattr(stub, rpc)(ppb.policy(policy=data))).status

        pol = {"metadata": {"name": "p", "namespace": "demo"}, "spec": {"action": "Block"}}
        assert await call("containerPolicy", {"type": "ADDED", "object": pol}) == ppb.Applied
        assert seen[-1]["op"] == "apply" and json.loads(seen[-1]["text"])["kind"] == "KubeArmorPolicy"
        again = {**pol, "metadata": {"name": "again", "namespace": "demo"}}
        assert await call("containerPolicy", {"type": "MODIFIED", "object": again}) == ppb.Modified
        assert await call("containerPolicy", {"type": "ADDED", "object": {"metadata": {"name": "x"}}}) == ppb.Invalid
        assert await call("containerPolicy", {"type": "DELETED", "object": pol}) == ppb.Deleted
        assert seen[-1] == {"op": "delete", "kind": "KubeArmorPolicy", "namespace": "demo", "name": "p"}
        assert await call("containerPolicy", {"type": "DELETED", "object": again}) == ppb.NotExist
        assert await call("hostPolicy", {"type": "ADDED", "object": {**pol, "kind": "KubeArmorPolicy"}}) == ppb.Invalid
        assert await call("hostPolicy", {"type": "ADDED", "object": pol}) == ppb.Applied
        assert json.loads(seen[-1]["text"])["kind"] == "KubeArmorHostPolicy"
        assert await call("containerPolicy", b"{not json") == ppb.Invalid
        await nc.close()  # nobody answers now
        assert await call("containerPolicy", {"type": "ADDED", "object": pol}) == ppb.Failure
    plain = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    with pytest.raises(grpc.aio.AioRpcError):
        await pb_grpc.LogServiceStub(plain).HealthCheck(pb.NonceMessage(nonce=1), timeout=2)
    await plain.close()
