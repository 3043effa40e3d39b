"""The fanotify enforcer on the real kernel: inline EPERM only in selected mount namespaces.

Only private copies of /usr/bin/true are marked; every enforcer is closed and every process we start
is killed in ``finally`` blocks, so a failing test leaves no mark and no waiter behind.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus import connect, ensure_streams, request
from shared.codec import pack, unpack
from shared.errors import ServiceUnavailable
from shared.subjects import enforcer_await, health, rules_for_node
from services.enforcer.bpflsm import btf_func_id
from services.enforcer.select import choose, probe_all
from tests.conftest import require_root
from tests.kernel.nsutil import NsShell, block_exec, host_run, private_copy, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]
REPO = Path(__file__).resolve().parents[2]
EPERM_RC = 126


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


@pytest.fixture
def copy(tmp_path: Path) -> str:
    return private_copy("/usr/bin/true", tmp_path, "bwtrue")


@pytest.fixture
def ns_a() -> Iterator[NsShell]:
    shell = NsShell()
    try:
        yield shell
    finally:
        shell.close()


ns_b = ns_a


def test_probes_on_this_kernel() -> None:
    found = {name: (ok, why) for name, ok, why in probe_all()}
    assert found["Fanotify"][0] is True
    assert found["BPFLSM"][0] is False and "EPERM" in found["BPFLSM"][1]
    assert "lsm.c compiles, its load is refused" in found["BPFLSM"][1]  # the shared matching code builds
    assert found["AuditOnly"][0] is True
    assert found["eBPF Signal"][0] is True
    chosen = choose("bpflsm,fanotify,audit")
    try:
        assert chosen.name == "Fanotify + eBPF Signal" and chosen.alert_name == "Fanotify"
        assert chosen.by_operation() == {"Process": "Fanotify", "File": "Fanotify", "Network": "eBPF Signal",
                                         "Capabilities": "eBPF Signal"}
        only = choose("bpflsm,fanotify,-signal,audit")
        assert only.name == "Fanotify"
        only.close()
    finally:
        chosen.close()
    assert btf_func_id(Path("/sys/kernel/btf/vmlinux").read_bytes(), "bpf_lsm_file_open") > 0


def test_blocks_only_the_selected_namespace(enforcer, copy, ns_a, ns_b) -> None:
    assert ns_a.mntns != ns_b.mntns != os.stat("/proc/self/ns/mnt").st_ino
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [block_exec(copy)]), b=(ns_b.mntns, [])))
    rc, out = ns_a.run(copy)
    assert rc == EPERM_RC and "Operation not permitted" in out
    assert ns_b.run(copy) == (0, "")
    assert host_run(copy) == (0, "")
    assert ns_a.run("/usr/bin/true") == (0, "")  # the original binary is another inode
    stats = enforcer.stats()
    # an allowed exec of a marked file gets two verdicts: the exec, and the open (see fanplan: ld.so)
    assert stats["denied"] == 1 and stats["allowed"] == 4 and stats["errors"] == 0 and stats["marks"] == 1


LOADER = "/lib64/ld-linux-x86-64.so.2"


def test_running_the_program_through_the_loader_is_refused_too(enforcer, copy, ns_a, ns_b) -> None:
    """`ld.so FILE` opens FILE (no exec of it): an open by a loader is judged as an exec of FILE."""
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [block_exec(copy)]), b=(ns_b.mntns, [])))
    rc, out = ns_a.run(f"{LOADER} {copy}")
    assert rc != 0 and "Operation not permitted" in out, out
    assert ns_b.run(f"{LOADER} {copy}") == (0, "")   # the sibling and the host run it
    assert host_run(f"{LOADER} {copy}") == (0, "")
    assert ns_a.run(f"cat {copy} > /dev/null") == (0, "")  # reading the file is no exec
    assert ns_a.run(f"{LOADER} /usr/bin/true") == (0, "")  # nor is loading an unmarked program
    assert enforcer.stats()["errors"] == 0


def test_close_releases_every_mark(enforcer, copy, ns_a) -> None:
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [block_exec(copy)])))
    assert ns_a.run(copy)[0] == EPERM_RC
    enforcer.close()
    assert ns_a.run(copy) == (0, "")
    assert enforcer.stats()["marks"] == 0
    enforcer.close()  # idempotent
    with pytest.raises(RuntimeError):
        enforcer.apply(ruleset(2, a=(ns_a.mntns, [block_exec(copy)])))


def test_path_is_resolved_as_the_workload_sees_it(enforcer, copy, tmp_path, ns_a) -> None:
    """In ns A another file is bind-mounted over the path: that inode is marked, not the host's."""
    inner = private_copy("/usr/bin/true", tmp_path, "inner")
    assert ns_a.run(f"mount --bind {inner} {copy}")[0] == 0
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [block_exec(copy)])))
    rc, out = ns_a.run(copy)
    assert rc == EPERM_RC and "Operation not permitted" in out
    assert host_run(copy) == (0, "")   # the host's file at that path is not even marked
    assert host_run(inner) == (0, "")  # the marked inode, but the host is not selected
    assert enforcer.stats()["denied"] == 1 and enforcer.stats()["allowed"] == 2  # exec + open verdicts


def test_workloads_sharing_a_namespace_share_rules(enforcer, copy, ns_a) -> None:
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [block_exec(copy, action="Audit")]),
                           b=(ns_a.mntns, [block_exec(copy)])))
    assert ns_a.run(copy)[0] == EPERM_RC


def test_rules_change_at_run_time(enforcer, copy, tmp_path, ns_a) -> None:
    other = private_copy("/usr/bin/true", tmp_path, "bwtrue2")
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [])))
    assert ns_a.run(copy)[0] == 0 and enforcer.stats()["marks"] == 0
    enforcer.apply(ruleset(2, a=(ns_a.mntns, [block_exec(copy)])))
    enforcer.apply(ruleset(2, a=(ns_a.mntns, [block_exec(copy)])))  # idempotent
    assert enforcer.stats()["marks"] == 1
    assert ns_a.run(copy)[0] == EPERM_RC
    enforcer.apply(ruleset(3, a=(ns_a.mntns, [block_exec(other)])))  # swap: add new, remove old
    assert ns_a.run(copy)[0] == 0 and ns_a.run(other)[0] == EPERM_RC
    enforcer.apply(ruleset(4, a=(ns_a.mntns, [])))
    assert ns_a.run(other)[0] == 0 and enforcer.stats()["marks"] == 0


def test_matcher_decides_not_the_mark(enforcer, copy, tmp_path, ns_a) -> None:
    """Audit beside Block? Block wins (matcher). A from_source mismatch or a missing file: allowed."""
    audit = block_exec(copy, action="Audit")
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [audit, block_exec(copy)])))
    assert ns_a.run(copy)[0] == EPERM_RC
    scoped = block_exec(copy)
    scoped.from_source = [{"path": "/nonexistent/launcher"}]
    missing = block_exec(str(tmp_path / "does-not-exist"))
    enforcer.apply(ruleset(2, a=(ns_a.mntns, [scoped, missing])))
    assert ns_a.run(copy)[0] == 0  # marked, but the matcher says the source does not match
    assert enforcer.stats()["marks"] == 1 and enforcer.stats()["errors"] == 0


def test_every_exec_in_a_loop_is_denied_in_the_namespace_and_allowed_on_the_host(enforcer, copy, ns_a) -> None:
    """200 execs each way: none slips in the selected namespace, none is refused outside it.
    (The cost per exec is measured in bench/enforcer_overhead.py.)"""
    n = 200
    loop = f'ok=0; i=0; while [ $i -lt {n} ]; do {copy} 2>/dev/null && ok=$((ok+1)); i=$((i+1)); done; echo $ok'
    enforcer.apply(ruleset(1, a=(ns_a.mntns, [block_exec(copy)])))
    assert ns_a.run(loop, timeout=120) == (0, "0")
    assert host_run(loop, timeout=120) == (0, str(n))
    assert enforcer.stats()["denied"] == n


HARNESS = """
import sys, time
from services.enforcer.fanotify import FanotifyEnforcer
from tests.kernel.nsutil import block_exec, ruleset
enf = FanotifyEnforcer()
if sys.argv[3] == "stall":
    enf._should_deny = lambda *args: time.sleep(3600)  # a decision that never comes
enf.apply(ruleset(1, a=(int(sys.argv[1]), [block_exec(sys.argv[2])])))
print("ready", flush=True)
time.sleep(3600)
"""


def _harness(mntns: int, copy: str, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, str(mntns), copy, mode], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("mode", ["deny", "stall"])
def test_sigkill_releases_marks_and_waiters(copy, ns_a, mode) -> None:
    proc = _harness(ns_a.mntns, copy, mode)
    try:
        ns_a.send(copy)
        if mode == "deny":
            assert ns_a.result(10)[0] == EPERM_RC
        else:
            with pytest.raises(TimeoutError):
                ns_a.result(0.5)  # the exec waits for a verdict that will never come...
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if mode == "stall":
            assert ns_a.result(5) == (0, "")  # ...until the group dies with us: the kernel allows
        assert ns_a.run(copy, timeout=5) == (0, "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def _wait_health(nc, node: str, predicate, timeout: float = 10) -> dict:
    queue: asyncio.Queue = asyncio.Queue()

    async def on_beat(msg) -> None:
        queue.put_nowait(unpack(msg.data))

    sub = await nc.subscribe(health("enforcer", node), cb=on_beat)
    try:
        deadline = time.monotonic() + timeout
        while True:
            beat = await asyncio.wait_for(queue.get(), max(0.01, deadline - time.monotonic()))
            if predicate(beat["details"]):
                return beat["details"]
    finally:
        await sub.unsubscribe()


async def _request_when_up(nc, subject: str, payload: dict, timeout: float = 20) -> dict:
    """Request, retrying while nobody listens yet (the service is still starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await request(nc, subject, payload, timeout=max(0.1, deadline - time.monotonic()))
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_service_through_nats(nats_server, copy, ns_a, tmp_path) -> None:
    node = "test-node"
    nc = await connect(nats_server.url, "test")
    proc = None
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await js.publish(rules_for_node(node), pack(ruleset(1, a=(ns_a.mntns, [block_exec(copy)])).to_wire()))
        env = {**os.environ, "BULWARK_NATS_URL": nats_server.url, "BULWARK_NODE_NAME": node,
               "BULWARK_DATA_DIR": str(tmp_path), "BULWARK_HEARTBEAT_SECONDS": "0.2"}
        log = open(tmp_path / "enforcer.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "services.enforcer"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        reply = await _request_when_up(nc, enforcer_await(node), {"workload_id": "a", "timeout": 15})
        assert (reply["ok"], reply["version"], reply["enforcer"]) == (True, 1, "Fanotify")
        assert reply["enforcers"] == {"Process": "Fanotify", "File": "Fanotify", "Network": "eBPF Signal",
                                      "Capabilities": "eBPF Signal"}
        assert reply["rules"] == [block_exec(copy).to_wire()] and reply["file_posture"] == "audit"
        assert ns_a.run(copy)[0] == EPERM_RC

        miss = await request(nc, enforcer_await(node), {"workload_id": "zz", "timeout": 0.2}, timeout=5)
        assert miss["ok"] is False and "zz" in miss["reason"]
        bad = await request(nc, enforcer_await(node), {"nope": 1}, timeout=5)
        assert bad["ok"] is False and "bad request" in bad["reason"]

        # Many waiters for a workload that is not compiled yet; garbage on the subject is survived.
        waits = [asyncio.create_task(request(nc, enforcer_await(node), {"workload_id": "b", "timeout": 15},
                                             timeout=20)) for _ in range(20)]
        await asyncio.sleep(0.3)
        await js.publish(rules_for_node(node), b"\xc1garbage")
        # (the stream keeps one message per subject: let the garbage be delivered before replacing it)
        await _wait_health(nc, node, lambda d: d["decode_errors"] == 1)
        assert not any(w.done() for w in waits)
        await js.publish(rules_for_node(node), pack(ruleset(2, a=(ns_a.mntns, []), b=(ns_a.mntns, [])).to_wire()))
        replies = await asyncio.gather(*waits)
        assert all((r["ok"], r["version"], r["enforcer"], r["rules"]) == (True, 2, "Fanotify", []) for r in replies)
        assert ns_a.run(copy) == (0, "")  # the block was removed at run time
        details = await _wait_health(nc, node, lambda d: d["version"] == 2)
        assert details["enforcer"] == "Fanotify" and details["denied"] == 1 and details["marks"] == 0
        assert details["active"] == "Fanotify + eBPF Signal" and details["enforcers"]["Network"] == "eBPF Signal"

        await js.publish(rules_for_node(node), pack(ruleset(3, a=(ns_a.mntns, [block_exec(copy)])).to_wire()))
        await _wait_health(nc, node, lambda d: d["version"] == 3 and d["marks"] == 1)
        assert ns_a.run(copy)[0] == EPERM_RC
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert ns_a.run(copy, timeout=5) == (0, "")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        await nc.close()
