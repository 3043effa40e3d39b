"""The identity service against a real nats-server: register, list, replay after restart, reap."""
from __future__ import annotations

import os
import subprocess

from services.identity.host import host_namespaces
from shared.codec import unpack
from shared.nats.bus import connect, request
from shared.nats.subjects import IDENTITY_API, identity_events
from shared.schemas.identity import IdentityEvent, Workload
from tests.servicetools import eventually, service_log, start_service, stop_service, wait_healthy


def _workload(pid: int, **kw) -> dict:
    base = dict(id="a" * 64, name="wl", namespace="demo", kind="container", node="test-node",
                mntns=os.stat(f"/proc/{pid}/ns/mnt").st_ino, pidns=os.stat(f"/proc/{pid}/ns/pid").st_ino,
                labels={"app": "demo"}, host_pid=pid, source="launcher")
    base.update(kw)
    return Workload(**base).to_wire()


async def test_register_list_replay_and_reap(nats_server, tmp_path) -> None:
    proc = start_service("identity", nats_server.url, tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    nc = await connect(nats_server.url, "test")
    try:
        await wait_healthy(nc, "identity")
        events = await nc.jetstream().subscribe(identity_events("test-node"), ordered_consumer=True)
        host = IdentityEvent.from_wire(unpack((await events.next_msg(5)).data))
        assert host.type == "started" and host.workload.kind == "host"
        assert host.workload.mntns == host_namespaces()[0]

        bad_workload = _workload(sleeper.pid, labels={"a b": "c"})
        bad = await request(nc, IDENTITY_API, {"op": "register", "workload": bad_workload})
        assert not bad["ok"] and "workload.labels" in bad["error"]
        assert not (await request(nc, IDENTITY_API, {"op": "nope"}))["ok"]
        ok = await request(nc, IDENTITY_API, {"op": "register", "workload": _workload(sleeper.pid)})
        assert ok["ok"] and ok["seq"] >= 2, ok
        started = IdentityEvent.from_wire(unpack((await events.next_msg(5)).data))
        assert started.workload.labels == {"app": "demo"} and started.workload.started_ns > 0

        stop_service(proc)
        proc = start_service("identity", nats_server.url, tmp_path)
        await wait_healthy(nc, "identity")
        listed = await request(nc, IDENTITY_API, {"op": "list"})
        ids = {w["id"]: w for w in listed["workloads"]}
        assert "a" * 64 in ids and ids["a" * 64]["stopped_ns"] == 0, service_log(tmp_path, "identity")

        sleeper.kill()
        sleeper.wait()

        async def stopped() -> bool:
            wl = {w["id"]: w for w in (await request(nc, IDENTITY_API, {"op": "list"}))["workloads"]}
            return wl["a" * 64]["stopped_ns"] > 0

        assert await eventually(stopped, timeout=5), service_log(tmp_path, "identity")
        kinds = []
        while True:
            try:
                kinds.append(IdentityEvent.from_wire(unpack((await events.next_msg(1)).data)).type)
            except Exception:
                break
        assert kinds == ["stopped"], kinds  # the restart did not re-announce the host or the workload
    finally:
        sleeper.kill()
        await nc.close()
        assert stop_service(proc) == 0, service_log(tmp_path, "identity")
