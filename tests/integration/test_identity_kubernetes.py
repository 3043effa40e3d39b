"""The identity service with Kubernetes (scripted API answers, real client), the policy service and a
containerd-style container located by its cgroup: pods -> workloads, node labels -> host, policy CRs
-> the policy service."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from shared.codec import unpack
from shared.nats.bus import connect, request
from shared.nats.subjects import IDENTITY_API, POLICY_API, identity_events
from shared.schemas.identity import IdentityEvent
from tests.conftest import require_root
from tests.fixtures.k8s.fake_apiserver import FakeApiServer, load, load_events
from tests.servicetools import eventually, service_log, start_service, stop_service, wait_healthy

NODE = "k8s-node"
CRI_ID = os.urandom(32).hex()
# every hierarchy a container's cgroup may live in here: cgroup v1 (pids) and v2 (the unified tree,
# /sys/fs/cgroup itself on a v2-only host, /sys/fs/cgroup/unified on a hybrid one)
CGROUP_ROOTS = {"v1-pids": Path("/sys/fs/cgroup/pids"), "v2": Path("/sys/fs/cgroup"),
                "v2-hybrid": Path("/sys/fs/cgroup/unified")}
CRD = "/apis/security.kubearmor.com/v1/"


def _script(api: FakeApiServer) -> None:
    ids = {"DOCKER_ID": "d" * 64, "CRI_ID": CRI_ID}
    api.add_list("/api/v1/pods", load("pods-list.json", **ids))
    api.add_list("/api/v1/namespaces", load("namespaces-list.json"))
    api.add_list("/api/v1/nodes", load("nodes-list.json"))
    api.add_list(CRD + "kubearmorpolicies", load("kubearmorpolicies-list.json"))
    api.add_watch(CRD + "kubearmorpolicies", *load_events("kubearmorpolicies-watch-1.jsonl"))
    for plural in ("kubearmorclusterpolicies", "kubearmorhostpolicies"):
        api.add_list(CRD + plural, load("empty-list.json"))


def _hierarchies() -> list[str]:
    """The keys of CGROUP_ROOTS that are mounted here (v1 or v2, by the filesystem type)."""
    mounted = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _src, target, fstype, *_ = line.split()
        mounted[target] = fstype
    return [key for key, root in CGROUP_ROOTS.items()
            if mounted.get(str(root)) == ("cgroup" if key.startswith("v1") else "cgroup2")]


def _contained_sleeper(root: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A process with its own mount namespace in a cgroup named like a containerd container."""
    cgroup = root / "bulwark-test" / CRI_ID
    cgroup.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["unshare", "--mount", "--", "sleep", "60"])
    (cgroup / "cgroup.procs").write_text(str(proc.pid))
    return proc, cgroup


@pytest.mark.parametrize("hierarchy", _hierarchies() or ["none"])
async def test_pods_namespaces_nodes_and_policies_from_kubernetes(nats_server, tmp_path: Path,
                                                                 hierarchy: str) -> None:
    """Run once per cgroup hierarchy mounted here (this machine: v1 pids and the hybrid v2 tree)."""
    require_root()
    if hierarchy == "none":
        pytest.skip(f"none of {[str(r) for r in CGROUP_ROOTS.values()]} is a mounted cgroup hierarchy")
    api = FakeApiServer().start()
    _script(api)
    sleeper, cgroup = _contained_sleeper(CGROUP_ROOTS[hierarchy])
    env = {"BULWARK_KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig")), "BULWARK_DOCKER_HOST": "off",
           "BULWARK_CRI_SCAN_SECONDS": "0.2", "BULWARK_BACKOFF_INITIAL_SECONDS": "0.1"}
    policy = start_service("policy", nats_server.url, tmp_path, node=NODE)
    identity = start_service("identity", nats_server.url, tmp_path, node=NODE, **env)
    nc = await connect(nats_server.url, "test")
    try:
        await wait_healthy(nc, "identity", NODE)
        sub = await nc.jetstream().subscribe(identity_events(NODE), ordered_consumer=True)

        async def workloads() -> dict:
            listed = await request(nc, IDENTITY_API, {"op": "list"})
            return {w["id"]: w for w in listed["workloads"]}

        async def db_started() -> dict | None:
            return (await workloads()).get(CRI_ID)

        db = await eventually(db_started, timeout=15)
        assert db, service_log(tmp_path, "identity")
        assert (db["namespace"], db["pod"], db["name"], db["labels"]) == ("shop", "shop-db-0", "db", {"app": "db"})
        assert db["namespace_annotations"] == \
            {"kubearmor-file-posture": "block", "kubearmor-visibility": "process,file"}
        assert db["mntns"] == os.stat(f"/proc/{sleeper.pid}/ns/mnt").st_ino and db["host_pid"] == sleeper.pid
        assert db["source"] == "cri" and CRI_ID in db["cgroup"] and db["image"] == "registry.local/shop/db:15"

        async def host_labelled() -> bool:
            host = (await workloads()).get(f"host:{NODE}")
            return bool(host) and host["labels"].get("topology.kubernetes.io/zone") == "zone-a"

        assert await eventually(host_labelled, timeout=10), service_log(tmp_path, "identity")

        async def policies() -> list[str]:
            listed = await request(nc, POLICY_API, {"op": "list"})
            return sorted(p["name"] for p in listed["policies"])

        async def policies_followed() -> bool:
            return await policies() == ["shop-audit-cat"]

        assert await eventually(policies_followed, timeout=15), (await policies(), service_log(tmp_path, "identity"))
        assert [q.get("watch", "list") for q in api.calls(CRD + "kubearmorpolicies")][:2] == ["list", "true"]

        sleeper.kill()
        sleeper.wait()

        async def db_stopped() -> bool:
            return (await workloads())[CRI_ID]["stopped_ns"] > 0

        assert await eventually(db_stopped, timeout=10), service_log(tmp_path, "identity")
        seen = []
        while True:
            try:
                ev = IdentityEvent.from_wire(unpack((await sub.next_msg(0.5)).data))
            except Exception:
                break
            seen.append((ev.type, ev.workload.name))
        assert ("started", "db") in seen and ("stopped", "db") in seen and ("changed", NODE) in seen, seen
    finally:
        await nc.close()
        sleeper.kill()
        sleeper.wait()
        time.sleep(0.1)
        for path in (cgroup, cgroup.parent):
            try:
                path.rmdir()
            except OSError:
                pass
        api.stop()
        code_i, code_p = stop_service(identity), stop_service(policy)
    assert code_i == 0, service_log(tmp_path, "identity")
    assert code_p == 0, service_log(tmp_path, "policy")
