"""The feeder as a process against a real nats-server: identity + rules + raw batch -> one alert over
REST, the websocket and gRPC WatchAlerts; idempotent on redelivery; garbage is dead-lettered."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect as ws_connect

from bulwark.natsserver.process import free_port, wait_for_port
from shared.codec import pack, unpack
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import DEAD_LETTER, health, identity_events, raw_events, rules_for_node
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc
from shared.schemas import IdentityEvent, RawBatch, RawEvent, Rule, RuleSet, Workload, WorkloadRules

NODE = "test-node"
MNTNS, PIDNS = 4026532777, 4026532778
ROOT = Path(__file__).resolve().parents[2]


class Feeder:
    """A ``python -m services.feeder`` subprocess and its ports."""

    def __init__(self, nats_url: str, data_dir: Path, **extra: str) -> None:
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.log = data_dir.parent / "feeder.log"
        env = {**os.environ, "BULWARK_NATS_URL": nats_url, "BULWARK_DATA_DIR": str(data_dir),
               "BULWARK_NODE_NAME": NODE, "BULWARK_REST_PORT": str(self.rest_port),
               "BULWARK_GRPC_PORT": str(self.grpc_port), "BULWARK_HEARTBEAT_SECONDS": "0.2"}
        env.pop("BULWARK_DB_URL", None)
        env.update(extra)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.feeder"], cwd=ROOT, env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)
        self.base = f"http://127.0.0.1:{self.rest_port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.kill()
        self.proc.wait()

    async def ready(self) -> None:
        """Wait until REST and gRPC accept connections."""
        await asyncio.to_thread(wait_for_port, self.rest_port, 30.0)
        await asyncio.to_thread(wait_for_port, self.grpc_port, 10.0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)


@pytest.fixture
async def feeder(nats_server: Any, tmp_path: Path) -> AsyncIterator[Feeder]:
    proc = Feeder(nats_server.url, tmp_path / "data")
    try:
        await asyncio.to_thread(wait_for_port, proc.rest_port, 20.0)
        await asyncio.to_thread(wait_for_port, proc.grpc_port, 5.0)
        yield proc
    finally:
        code = proc.stop()
        if code != 0:
            sys.stderr.write(proc.log.read_text()[-4000:])
        assert code == 0, f"feeder exited with {code}"


def _workload() -> Workload:
    return Workload(id="cid-1234", name="web", namespace="demo", kind="container", node=NODE, mntns=MNTNS,
                    pidns=PIDNS, labels={"app": "web"}, pod="web-0", image="nginx:1.27")


def _ruleset() -> RuleSet:
    rule = Rule(policy="block-sleep", policy_kind="KubeArmorPolicy", policy_namespace="demo",
                operation="Process", action="Block", severity=5, message="sleep is forbidden",
                tags=["MITRE", "T1059"], path="/usr/bin/sleep")
    wr = WorkloadRules(workload_id="cid-1234", mntns=MNTNS, pidns=PIDNS, rules=[rule])
    return RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1, workloads={"cid-1234": wr})


def _batch(seq: int, event_id: str, ret: int) -> bytes:
    ev = RawEvent(kind="exec", ts_ns=time.time_ns(), node=NODE, pid=5000, tid=5000, ppid=4999, ns_pid=12,
                  ns_ppid=1, uid=0, gid=0, mntns=MNTNS, pidns=PIDNS, cgroup_id=1, comm="sh", exe="/usr/bin/dash",
                  path="/usr/bin/sleep", ret=ret, syscall="execve", cwd="/", event_id=event_id)
    return pack(RawBatch(node=NODE, seq=seq, events=[ev.to_wire()]).to_wire())


async def _until(pred: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred() if asyncio.iscoroutinefunction(pred) else pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_raw_exec_becomes_one_alert_everywhere(nats_server: Any, feeder: Feeder) -> None:
    nc = await connect(nats_server.url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    beats: list[dict[str, Any]] = []
    dead: list[bytes] = []

    async def on_beat(msg: Any) -> None:
        beats.append(unpack(msg.data))

    async def on_dead(msg: Any) -> None:
        dead.append(msg.data)

    await nc.subscribe(health("feeder", NODE), cb=on_beat)
    await nc.subscribe(DEAD_LETTER, cb=on_dead)
    http = httpx.AsyncClient(base_url=feeder.base, timeout=5)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{feeder.grpc_port}")
    try:
        stub = pb_grpc.LogServiceStub(channel)
        assert (await stub.HealthCheck(pb.NonceMessage(nonce=42))).Retval == 42
        hc = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="feeder.LogService"))
        assert hc.status == health_pb2.HealthCheckResponse.SERVING

        ws = await ws_connect(f"ws://127.0.0.1:{feeder.rest_port}/api/v1/stream")
        grpc_alerts: list[pb.Alert] = []
        watch = stub.WatchAlerts(pb.RequestMessage(Filter="policy"))
        reader = asyncio.create_task(_collect(watch, grpc_alerts))
        await _until(lambda: beats and beats[-1]["details"].get("watchers") == 2, 5, "ws+grpc watchers")

        await js.publish(identity_events(NODE), pack(IdentityEvent("started", _workload(), time.time_ns()).to_wire()))
        await js.publish(rules_for_node(NODE), pack(_ruleset().to_wire()))
        await js.publish(raw_events(NODE), _batch(1, "ev-1", -1))

        ws_msg = json.loads(await asyncio.wait_for(ws.recv(), 20.0))
        rows: list[dict[str, Any]] = []

        async def one_row() -> bool:
            rows[:] = (await http.get("/api/v1/alerts")).json()
            return len(rows) == 1

        await _until(one_row, 20.0, "alert over REST")
        await _until(lambda: len(grpc_alerts) == 1, 20.0, "alert over gRPC")

        alert = rows[0]
        assert ws_msg == alert
        expected = {"ClusterName": "default", "HostName": NODE, "NamespaceName": "demo", "PodName": "web-0",
                    "Labels": "app=web", "ContainerID": "cid-1234", "ContainerName": "web",
                    "ContainerImage": "nginx:1.27", "HostPID": 5000, "HostPPID": 4999, "PID": 12, "PPID": 1,
                    "UID": 0, "ProcessName": "/usr/bin/sleep", "ParentProcessName": "/usr/bin/dash",
                    "Source": "/usr/bin/dash", "Operation": "Process", "Resource": "/usr/bin/sleep",
                    "Data": "syscall=SYS_EXECVE", "PolicyName": "block-sleep", "Severity": "5",
                    "Tags": "MITRE,T1059", "ATags": ["MITRE", "T1059"], "Message": "sleep is forbidden",
                    "Type": "MatchedPolicy", "Action": "Block", "Result": "Operation not permitted",
                    "EventID": "ev-1"}
        assert {k: alert[k] for k in expected} == expected
        assert alert["UpdatedTime"].endswith("Z") and abs(alert["Timestamp"] - time.time()) < 60
        g = grpc_alerts[0]
        assert (g.PolicyName, g.Action, g.Result, g.HostPID, g.PID, list(g.ATags)) == \
            ("block-sleep", "Block", "Operation not permitted", 5000, 12, ["MITRE", "T1059"])
        assert (g.Timestamp, g.UpdatedTime, g.ContainerName) == (alert["Timestamp"], alert["UpdatedTime"], "web")

        # Redelivery of the same batch: processed, but still one alert anywhere.
        events_before = beats[-1]["details"].get("events", 0)
        await js.publish(raw_events(NODE), _batch(1, "ev-1", -1))
        await _until(lambda: beats[-1]["details"].get("events", 0) > events_before, 3, "duplicate processed")
        assert len((await http.get("/api/v1/alerts")).json()) == 1
        assert beats[-1]["details"]["duplicates"] == 1
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        assert len(grpc_alerts) == 1

        # Garbage: dead-lettered, counted, and the feeder keeps working.
        await js.publish(raw_events(NODE), b"\xc1 this is not msgpack")
        await _until(lambda: beats[-1]["details"].get("dead_letters") == 1, 3, "dead letter counted")
        assert dead == [b"\xc1 this is not msgpack"]
        await js.publish(raw_events(NODE), _batch(2, "ev-2", -13))
        second = json.loads(await asyncio.wait_for(ws.recv(), 2.0))
        assert (second["EventID"], second["Result"]) == ("ev-2", "Permission denied")
        listed = (await http.get("/api/v1/alerts", params={"policy": "block-sleep", "limit": 10})).json()
        assert [a["EventID"] for a in listed] == ["ev-2", "ev-1"]
        assert (await http.get("/api/v1/alerts", params={"namespace": "other"})).json() == []
        assert (await http.get("/api/v1/alerts", params={"since": "not-a-time"})).status_code == 422

        # No policy service is answering; only the feeder sends heartbeats.
        resp = await http.post("/api/v1/policies", content="apiVersion: security.kubearmor.com/v1\n")
        assert resp.status_code == 503
        assert (await http.get("/api/v1/policies")).status_code == 503
        hz = await http.get("/healthz")
        assert hz.status_code == 503
        body = hz.json()
        assert body["healthy"] is False and body["services"]["feeder"]["ok"] is True
        assert body["services"]["monitor"]["ok"] is False
        await ws.close()
        watch.cancel()
        reader.cancel()
    finally:
        await channel.close()
        await http.aclose()
        await nc.close()


async def test_policy_api_is_proxied_to_the_policy_service(nats_server: Any, feeder: Feeder) -> None:
    nc = await connect(nats_server.url, "fake-policy")

    async def policy(msg: Any) -> None:
        req = unpack(msg.data)
        if req["op"] == "apply":
            ok = "kind:" in req["text"]
            reply = {"ok": ok, "results": [{"name": "p", "status": "Applied"}] if ok else [],
                     "errors": [] if ok else [{"document": "0", "path": "kind", "message": "required"}]}
        elif req["op"] == "list":
            reply = {"ok": True, "policies": [{"name": "p"}]}
        else:
            reply = {"ok": True, "found": req["name"] == "p"}
        await msg.respond(pack(reply))

    from shared.nats.subjects import POLICY_API

    await nc.subscribe(POLICY_API, cb=policy)
    await nc.flush()
    async with httpx.AsyncClient(base_url=feeder.base, timeout=5) as http:
        ok = await http.post("/api/v1/policies", content="kind: KubeArmorPolicy\n")
        assert ok.status_code == 200 and ok.json() == {"ok": True, "results": [{"name": "p", "status": "Applied"}],
                                                       "warnings": []}
        bad = await http.post("/api/v1/policies", content="{}")
        assert bad.status_code == 422
        assert bad.json()["errors"] == [{"document": "0", "path": "kind", "message": "required"}]
        assert (await http.get("/api/v1/policies")).json() == {"ok": True, "policies": [{"name": "p"}]}
        deleted = await http.delete("/api/v1/policies/KubeArmorPolicy/p", params={"namespace": "demo"})
        assert deleted.status_code == 200
        deleted = await http.delete("/api/v1/policies/KubeArmorPolicy/q", params={"namespace": "demo"})
        assert deleted.status_code == 404
    await nc.close()


async def _collect(call: Any, into: list[pb.Alert]) -> None:
    try:
        async for alert in call:
            into.append(alert)
    except (asyncio.CancelledError, grpc.aio.AioRpcError):
        pass


LAUNCHED_MNTNS, LAUNCHED_PIDNS = 4026532901, 4026532902


def _launched_exec(ts_ns: int, exe: str, path: str, event_id: str) -> dict[str, Any]:
    return RawEvent(kind="exec", ts_ns=ts_ns, node=NODE, pid=7000, tid=7000, ppid=6999, ns_pid=2, ns_ppid=1,
                    uid=0, gid=0, mntns=LAUNCHED_MNTNS, pidns=LAUNCHED_PIDNS, cgroup_id=1, comm="x", exe=exe,
                    path=path, ret=0, syscall="execve", cwd="/", event_id=event_id).to_wire()


async def test_events_before_a_launched_workload_registered_are_not_its_logs(nats_server: Any,
                                                                           feeder: Feeder) -> None:
    started = time.time_ns()
    wl = Workload(id="l" * 64, name="quiet", namespace="quiet", kind="container", node=NODE,
                  mntns=LAUNCHED_MNTNS, pidns=LAUNCHED_PIDNS, labels={"app": "quiet"}, pod="quiet",
                  source="launcher", started_ns=started)
    entry = WorkloadRules(workload_id=wl.id, mntns=LAUNCHED_MNTNS, pidns=LAUNCHED_PIDNS)
    rules = RuleSet(node=NODE, version=1, policy_seq=1, identity_seq=1, workloads={wl.id: entry})
    nc = await connect(nats_server.url, "test")
    beats: list[dict[str, Any]] = []

    async def on_beat(msg: Any) -> None:
        beats.append(unpack(msg.data))

    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await nc.subscribe(health("feeder", NODE), cb=on_beat)
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", wl, started).to_wire()))
        await js.publish(rules_for_node(NODE), pack(rules.to_wire()))
        events = [_launched_exec(started - 5_000_000, "/usr/bin/python3.11", "/usr/bin/python3.11", "setup"),
                  _launched_exec(started + 5_000_000, "/usr/bin/python3.11", "/usr/bin/true", "command")]
        await js.publish(raw_events(NODE), pack(RawBatch(node=NODE, seq=1, events=events).to_wire()))
        async with httpx.AsyncClient(base_url=feeder.base, timeout=5) as http:
            async def logged() -> list[dict[str, Any]]:
                return list((await http.get("/api/v1/logs", params={"namespace": "quiet"})).json())

            async def command_logged() -> bool:
                return bool(await logged())

            await _until(command_logged, 20.0, "the command's log")
            await _until(lambda: beats and beats[-1]["details"].get("launcher_setup") == 1, 10.0,
                         "launcher_setup counted")
            assert [r["Resource"] for r in await logged()] == ["/usr/bin/true"]
    finally:
        await nc.close()
