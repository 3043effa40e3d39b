"""The identity service follows a real (private) Docker engine: found at start, events, restart with no gap."""
from __future__ import annotations

import os

import pytest

from shared.codec import unpack
from shared.nats.bus import connect, request
from shared.nats.subjects import IDENTITY_API, identity_events
from shared.schemas.identity import IdentityEvent
from tests.docker.engine import PrivateDocker
from tests.servicetools import eventually, service_log, start_service, stop_service, wait_healthy

pytestmark = pytest.mark.docker


async def _drain(sub, quiet: float = 1.5) -> list[IdentityEvent]:
    out = []
    while True:
        try:
            out.append(IdentityEvent.from_wire(unpack((await sub.next_msg(quiet)).data)))
        except Exception:
            return out


async def _events_until(sub, want: int, timeout: float = 15) -> list[IdentityEvent]:
    out: list[IdentityEvent] = []
    deadline = timeout
    while len(out) < want and deadline > 0:
        try:
            out.append(IdentityEvent.from_wire(unpack((await sub.next_msg(0.5)).data)))
        except Exception:
            deadline -= 0.5
    return out + await _drain(sub, 1.0)


def _docker_events(events: list[IdentityEvent]) -> list[tuple[str, str]]:
    return [(e.type, e.workload.name) for e in events if e.workload.source == "docker"]


async def test_containers_found_at_start_followed_and_reconciled_after_restart(
        dockerd: PrivateDocker, busybox_image: str, nats_server, tmp_path) -> None:
    early = dockerd.run("id-early", busybox_image, {"app": "web", "com.docker.compose.project": "shop"})
    doomed = dockerd.run("id-doomed", busybox_image, {"app": "db"})
    env = {"BULWARK_DOCKER_HOST": dockerd.host}
    proc = start_service("identity", nats_server.url, tmp_path, **env)
    nc = await connect(nats_server.url, "test")
    try:
        await wait_healthy(nc, "identity")
        sub = await nc.jetstream().subscribe(identity_events("test-node"), ordered_consumer=True)
        first = await _events_until(sub, 3)
        assert sorted(_docker_events(first)) == [("started", "id-doomed"), ("started", "id-early")], \
            service_log(tmp_path, "identity")
        wl = next(e.workload for e in first if e.workload.name == "id-early")
        pid = int(dockerd.cli("inspect", "-f", "{{.State.Pid}}", early).stdout)
        assert wl.id == early and len(wl.id) == 64
        assert (wl.mntns, wl.pidns) == (os.stat(f"/proc/{pid}/ns/mnt").st_ino, os.stat(f"/proc/{pid}/ns/pid").st_ino)
        assert wl.namespace == "docker" and wl.kind == "container" and wl.host_pid == pid
        assert wl.labels == {"app": "web", "com.docker.compose.project": "shop"}
        assert wl.image == busybox_image and early in wl.cgroup and wl.started_ns > 0

        # While running: start and die events.
        live = dockerd.run("id-live", busybox_image, {"app": "web"})
        assert _docker_events(await _events_until(sub, 1)) == [("started", "id-live")]
        dockerd.cli("rm", "-f", live)
        assert _docker_events(await _events_until(sub, 1)) == [("stopped", "id-live")]

        # Down: one container dies, one starts, one is unchanged -> exactly that on restart.
        assert stop_service(proc) == 0, service_log(tmp_path, "identity")
        dockerd.cli("rm", "-f", doomed)
        dockerd.run("id-new", busybox_image, {"app": "cache"})
        proc = start_service("identity", nats_server.url, tmp_path, **env)
        after = await _events_until(sub, 2)
        assert sorted(_docker_events(after)) == [("started", "id-new"), ("stopped", "id-doomed")], after
        assert not [e for e in after if e.workload.kind == "host"]  # host not re-announced

        listed = {w["name"]: w for w in (await request(nc, IDENTITY_API, {"op": "list"}))["workloads"]}
        assert listed["id-early"]["stopped_ns"] == 0 and listed["id-doomed"]["stopped_ns"] > 0
    finally:
        await nc.close()
        code = stop_service(proc)
        for name in ("id-early", "id-doomed", "id-live", "id-new"):
            dockerd.cli("rm", "-f", name, check=False)
    assert code == 0, service_log(tmp_path, "identity")


async def test_absent_engine_never_blocks_the_service(nats_server, tmp_path) -> None:
    proc = start_service("identity", nats_server.url, tmp_path, BULWARK_DOCKER_HOST=f"unix://{tmp_path}/none.sock",
                         BULWARK_BACKOFF_INITIAL_SECONDS="0.1", BULWARK_BACKOFF_MAX_SECONDS="0.5")
    nc = await connect(nats_server.url, "test")
    try:
        await wait_healthy(nc, "identity")
        listed = await request(nc, IDENTITY_API, {"op": "list"})
        assert listed["ok"] and any(w["kind"] == "host" for w in listed["workloads"])

        async def retried() -> bool:
            beat = await wait_healthy(nc, "identity")
            return beat["details"].get("docker_errors", 0) >= 2 and beat["details"]["docker_connected"] == 0

        assert await eventually(retried, timeout=10), service_log(tmp_path, "identity")
    finally:
        await nc.close()
        assert stop_service(proc) == 0, service_log(tmp_path, "identity")
