"""The policy service as a process against a real nats-server: apply, compile, replay, delete."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.codec import pack, unpack
from shared.errors import ServiceUnavailable
from shared.nats.bus import connect, ensure_streams, request, stream_last_seq
from shared.nats.subjects import POLICIES, POLICY_API, RULES, health, identity_events, rules_for_node
from shared.schemas.identity import IdentityEvent, Workload
from shared.schemas.rules import RuleSet

ROOT = Path(__file__).resolve().parents[2]
NODE = "test-node"

POLICY = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata:
  name: block-sleep
spec:
  severity: 5
  selector:
    matchLabels: {app: web}
  process:
    matchPaths:
    - path: /bin/sleep
  action: Block
"""


def start_service(url: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BULWARK_NATS_URL": url, "BULWARK_DATA_DIR": str(data_dir),
           "BULWARK_NODE_NAME": "policy-host", "BULWARK_HEARTBEAT_SECONDS": "0.2", "PYTHONPATH": str(ROOT),
           "BULWARK_STOPPED_GRACE_SECONDS": "1"}
    return subprocess.Popen([sys.executable, "-m", "services.policy"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def call(nc: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return await request(nc, POLICY_API, payload, timeout=5)


async def wait_ready(nc: Any, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            await request(nc, POLICY_API, {"op": "list"}, timeout=0.5)
            return
        except ServiceUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("policy service never answered: " + log.read_text())


async def last_ruleset(js: Any) -> RuleSet | None:
    try:
        msg = await js.get_last_msg(RULES.name, rules_for_node(NODE))
    except Exception:
        return None
    return RuleSet.from_wire(unpack(msg.data))


async def wait_ruleset(js: Any, ok: Any, timeout: float = 5.0) -> RuleSet:
    deadline = time.monotonic() + timeout
    rs = None
    while time.monotonic() < deadline:
        rs = await last_ruleset(js)
        if rs is not None and ok(rs):
            return rs
        await asyncio.sleep(0.01)
    raise AssertionError(f"no matching RuleSet; last: {rs}")


@dataclass
class RunningPolicy:
    """The policy service process under test and the test's own NATS connection."""

    nc: Any
    js: Any
    url: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    async def restart(self) -> None:
        stop_service(self.proc)
        self.proc = start_service(self.url, self.data_dir, self.log)
        await wait_ready(self.nc, self.proc, self.log)


@contextlib.asynccontextmanager
async def running_policy(url: str, data_dir: Path) -> AsyncIterator[RunningPolicy]:
    """Streams created, the service started and answering; stopped (and the connection closed) after."""
    log = data_dir / "policy.log"
    nc = await connect(url, "test")
    js = nc.jetstream()
    await ensure_streams(js)
    svc = RunningPolicy(nc, js, url, data_dir, log, start_service(url, data_dir, log))
    try:
        await wait_ready(nc, svc.proc, log)
        yield svc
    finally:
        stop_service(svc.proc)
        await nc.close()


def workload(id: str) -> Workload:
    return Workload(id=id, name=id, namespace="default", kind="container", node=NODE, mntns=4026531840 + len(id),
                    pidns=4026531836, labels={"app": "web"}, started_ns=time.time_ns())


async def test_policy_service_end_to_end(nats_server, tmp_path: Path) -> None:
    async with running_policy(nats_server.url, tmp_path) as svc:
        nc, js = svc.nc, svc.js
        beats: list[dict[str, Any]] = []

        async def on_beat(msg: Any) -> None:
            beats.append(unpack(msg.data))

        sub = await nc.subscribe(health("policy", "policy-host"), cb=on_beat)

        # A workload appears: its node gets a RuleSet listing it (no rules yet).
        arrived: asyncio.Queue[tuple[float, RuleSet]] = asyncio.Queue()

        async def on_rules(msg: Any) -> None:
            arrived.put_nowait((time.monotonic(), RuleSet.from_wire(unpack(msg.data))))

        rules_sub = await nc.subscribe(rules_for_node(NODE), cb=on_rules)
        await nc.flush()
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", workload("web-1"),
            time.time_ns()).to_wire()))
        _, rs = await asyncio.wait_for(arrived.get(), 20)
        await rules_sub.unsubscribe()
        assert "web-1" in rs.workloads and rs.workloads["web-1"].rules == [] and rs.identity_seq >= 1

        reply = await call(nc, {"op": "apply", "text": POLICY})
        assert reply["ok"] is True and reply["errors"] == []
        assert reply["results"] == [{"kind": "KubeArmorPolicy", "namespace": "default", "name": "block-sleep",
                                     "status": "created"}]
        rs2 = await wait_ruleset(js, lambda r: bool(r.workloads["web-1"].rules))
        rule, = rs2.workloads["web-1"].rules
        assert (rule.operation, rule.path, rule.action, rule.severity, rule.policy) == \
            ("Process", "/bin/sleep", "Block", 5, "block-sleep")
        assert rs2.version > rs.version and rs2.policy_seq >= 1

        assert (await call(nc, {"op": "apply", "text": POLICY}))["results"][0]["status"] == "unchanged"

        # One invalid document: nothing changes at all.
        seq_before = await stream_last_seq(js, POLICIES)
        bad = POLICY.replace("severity: 5", "severity: 6") + "---\n" + POLICY.replace("Block", "Kill").replace(
            "block-sleep", "other")
        reply = await call(nc, {"op": "apply", "text": bad})
        assert reply["ok"] is False and reply["results"] == []
        assert reply["errors"] == [{"document": "document 2", "path": "spec.action",
                                    "message": "'Kill' is not one of: Allow, Audit, Block"}]
        assert await stream_last_seq(js, POLICIES) == seq_before
        listed = (await call(nc, {"op": "list"}))["policies"]
        assert [(p["name"], p["spec"]["severity"], p["selects"]) for p in listed] == [("block-sleep", 5, ["web-1"])]

        # Garbage is answered and counted; the service keeps going.
        assert unpack((await nc.request(POLICY_API, b"\xc1", timeout=5)).data)["ok"] is False
        assert (await call(nc, {"op": "nope"}))["errors"][0]["path"] == "op"
        await asyncio.sleep(0.5)
        assert beats and beats[-1]["details"]["bad_requests"] >= 2 and beats[-1]["details"]["policies"] == 1
        await sub.unsubscribe()

        # Restart: state comes back from the streams.
        await svc.restart()
        listed = (await call(nc, {"op": "list"}))["policies"]
        assert len(listed) == 1
        entry = listed[0]
        assert (entry["kind"], entry["namespace"], entry["name"], entry["status"], entry["selects"]) == \
            ("KubeArmorPolicy", "default", "block-sleep", "applied", ["web-1"])
        assert entry["policy_seq"] == seq_before
        rs3 = await wait_ruleset(js, lambda r: r.version > rs2.version)
        assert rs3.workloads["web-1"].rules[0].path == "/bin/sleep"

        # A second workload after the restart is picked up from the live identity stream.
        await js.publish(identity_events(NODE), pack(IdentityEvent("started", workload("web-2"),
            time.time_ns()).to_wire()))
        rs4 = await wait_ruleset(js, lambda r: "web-2" in r.workloads)
        assert len(rs4.workloads["web-2"].rules) == 1

        # Delete.
        reply = await call(nc, {"op": "delete", "kind": "KubeArmorPolicy", "namespace": "default",
            "name": "block-sleep"})
        assert reply["ok"] is True and reply["found"] is True
        await wait_ruleset(js, lambda r: all(not w.rules for w in r.workloads.values()))
        assert (await call(nc, {"op": "list"}))["policies"] == []
        reply = await call(nc, {"op": "delete", "kind": "ksp", "name": "block-sleep"})
        assert reply["ok"] is True and reply["found"] is False

        # A stopped workload stays compiled for its grace (events it caused may be in flight), then leaves.
        stopped_at = time.monotonic()
        await js.publish(identity_events(NODE), pack(IdentityEvent("stopped", workload("web-1"),
            time.time_ns()).to_wire()))
        await wait_ruleset(js, lambda r: set(r.workloads) == {"web-2"})
        assert time.monotonic() - stopped_at >= 0.9


async def test_a_burst_of_workloads_is_compiled_in_a_few_rule_sets(nats_server, tmp_path: Path) -> None:
    """5,000 workloads started at once under one policy: the node's last RuleSet holds every one with its
    rule, and the burst costs a few RuleSets, not one per identity event (each compile covers the whole
    node, so one per event was quadratic: a 5,000-workload node kept the service busy for minutes). Such a
    RuleSet is over NATS's 1 MiB as msgpack; it goes out deflated."""
    async with running_policy(nats_server.url, tmp_path) as svc:
        nc, js = svc.nc, svc.js
        assert (await call(nc, {"op": "apply", "text": POLICY}))["ok"] is True
        published: list[int] = []
        sizes: list[int] = []

        async def on_rules(msg: Any) -> None:
            published.append(RuleSet.from_wire(unpack(msg.data)).version)
            sizes.append(len(msg.data))

        rules_sub = await nc.subscribe(rules_for_node(NODE), cb=on_rules)
        await nc.flush()
        count = 5000
        acks = [await js.publish_async(identity_events(NODE), pack(IdentityEvent(
            "started", workload(f"burst-{i:04d}"), time.time_ns()).to_wire())) for i in range(count)]
        await asyncio.gather(*acks)
        rs = await wait_ruleset(js, lambda r: len(r.workloads) == count, timeout=120)
        assert all(w.rules and w.rules[0].path == "/bin/sleep" for w in rs.workloads.values())
        listed = (await call(nc, {"op": "list"}))["policies"]
        assert len(listed[0]["selects"]) == count
        await rules_sub.unsubscribe()
        assert 1 <= len(published) < count // 3, published[:20]
        assert len(pack(rs.to_wire())) > 1 << 20 > sizes[-1]
