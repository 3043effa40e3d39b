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

from bulwark.procs import terminate
from services.enforcer.bpflsm import btf_func_id
from services.enforcer.select import choose, probe_all
from shared.bpf.btf import Btf
from shared.bpf.headers import maple_cflags
from shared.codec import pack, unpack
from shared.errors import ServiceUnavailable
from shared.nats.bus import connect, ensure_streams, request
from shared.nats.subjects import enforcer_await, health, rules_for_node
from tests.kernel.nsutil import NsShell, block_exec, host_run, private_copy, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(90)]
REPO = Path(__file__).resolve().parents[2]
EPERM_RC = 126


def signal_presets() -> dict[str, str]:
    """The presets the eBPF signal enforcer blocks here: fileless execs, and executable anonymous mappings
    where it can find an mprotect's mapping (maple-tree kernels, 6.1+)."""
    return {"Preset:filelessExec": "eBPF Signal",
            **({"Preset:anonMapExec": "eBPF Signal"} if maple_cflags(Btf.load()) else {})}


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
    assert found["AuditOnly"][0] is True
    assert found["eBPF Signal"][0] is True
    chosen = choose("fanotify,audit")  # BPF-LSM, where it loads, is chosen first: tests/kernel/test_bpflsm_enforcer.py
    try:
        assert chosen.name == "Fanotify + eBPF Signal" and chosen.alert_name == "Fanotify"
        assert chosen.by_operation() == {"Process": "Fanotify", "File": "Fanotify", "Network": "eBPF Signal",
                                         "Capabilities": "eBPF Signal", **signal_presets()}
        only = choose("fanotify,-signal,audit")
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
from services.enforcer.fanotify.enforcer import FanotifyEnforcer
from tests.kernel.nsutil import block_exec, ruleset
enf = FanotifyEnforcer(holder=sys.argv[4] or None)
if sys.argv[3] == "stall":
    enf._should_deny = lambda *args: time.sleep(3600)  # a decision that never comes
enf.apply(ruleset(1, a=(int(sys.argv[1]), [] if sys.argv[3] == "empty" else [block_exec(sys.argv[2])])))
if sys.argv[3] == "blind":  # dies between reading events and noting them in the journal
    enf._journal.batch = lambda buf: time.sleep(3600)
print("ready", flush=True)
while True:
    time.sleep(0.1)
    enf.keep_held()  # what the service does every second
"""


def _harness(mntns: int, copy: str, mode: str, holder: str = "") -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, str(mntns), copy, mode, holder], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _kill(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``bulwark.fdholder`` on a private socket; stopped (the group and its marks released) at the end."""
    sock = str(tmp_path / "fanotify.sock")
    proc = subprocess.Popen([sys.executable, "-m", "bulwark.fdholder", sock], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "holder.log", "wb"), text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield sock, proc
    finally:
        terminate(proc, grace=5)


@pytest.mark.parametrize("mode", ["deny", "stall", "blind"])
def test_sigkill_of_the_enforcer_fails_closed_with_the_holder(copy, ns_a, holder, mode) -> None:
    """kill -9 of the enforcer: the exec it had read and not answered is denied (from its journal, or
    by every fd number when it died inside a read), the next ones too until a new enforcer takes the
    group back; the host is never refused; stopping the holder releases every mark."""
    sock, holder_proc = holder
    proc = _harness(ns_a.mntns, copy, mode, sock)
    try:
        ns_a.send(copy)
        if mode == "deny":
            assert ns_a.result(10)[0] == EPERM_RC
        else:
            with pytest.raises(TimeoutError):
                ns_a.result(0.5)  # read, never answered...
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if mode != "deny":
            assert ns_a.result(10)[0] == EPERM_RC  # ...and denied once the enforcer died, not allowed
        assert ns_a.run(copy)[0] == EPERM_RC  # no enforcer: the holder denies in the selected namespace
        assert host_run(copy) == (0, "")  # and allows elsewhere
        proc = _harness(ns_a.mntns, copy, "deny", sock)  # the next enforcer takes the group back
        assert ns_a.run(copy)[0] == EPERM_RC and host_run(copy) == (0, "")
    finally:
        _kill(proc)
    terminate(holder_proc, grace=5)
    assert ns_a.run(copy, timeout=5) == (0, "")  # the holder's stop is the full release


def test_a_restarted_holder_gets_the_group_back(copy, ns_a, holder, tmp_path) -> None:
    """kill -9 of the holder: the enforcer keeps enforcing and hands its group to the next holder,
    so a kill -9 of the enforcer after that still fails closed."""
    sock, holder_proc = holder
    proc = _harness(ns_a.mntns, copy, "deny", sock)
    second = None
    try:
        holder_proc.kill()
        holder_proc.wait(5)
        assert ns_a.run(copy)[0] == EPERM_RC  # the enforcer holds its group itself meanwhile
        second = subprocess.Popen([sys.executable, "-m", "bulwark.fdholder", sock], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=open(tmp_path / "holder2.log", "wb"), text=True)
        assert second.stdout is not None and second.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while _held_marks(second.pid) != 1:  # the group and its mark, handed over
            assert time.monotonic() < deadline, "the enforcer did not hand its group to the new holder"
            time.sleep(0.1)
        _kill(proc)
        assert ns_a.run(copy)[0] == EPERM_RC and host_run(copy) == (0, "")
    finally:
        _kill(proc)
        if second is not None:
            terminate(second, grace=5)
    assert ns_a.run(copy, timeout=5) == (0, "")


def _held_marks(pid: int) -> int:
    """Inode marks of the fanotify group(s) process ``pid`` holds, from its fdinfo."""
    found = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[fanotify]":
            found += Path(f"/proc/{pid}/fdinfo/{fd}").read_text().count("fanotify ino:")
    return found


def test_next_enforcer_keeps_the_marks_it_wants_and_removes_the_others(copy, ns_a, holder) -> None:
    sock, holder_proc = holder
    proc = _harness(ns_a.mntns, copy, "deny", sock)
    try:
        assert _held_marks(holder_proc.pid) == 1
        _kill(proc)
        proc = _harness(ns_a.mntns, copy, "empty", sock)  # its rules name nothing: the mark goes
        assert _held_marks(holder_proc.pid) == 0 and ns_a.run(copy) == (0, "")
        _kill(proc)
        proc = _harness(ns_a.mntns, copy, "deny", sock)
        assert _held_marks(holder_proc.pid) == 1 and ns_a.run(copy)[0] == EPERM_RC
    finally:
        _kill(proc)


def test_sigkill_without_holder_leaves_no_mark(copy, ns_a) -> None:
    proc = _harness(ns_a.mntns, copy, "deny")
    try:
        assert ns_a.run(copy)[0] == EPERM_RC
    finally:
        _kill(proc)
    assert ns_a.run(copy, timeout=5) == (0, "")


def test_no_blocked_exec_slips_through_repeated_enforcer_kills(copy, ns_a, holder, tmp_path) -> None:
    """A loop of blocked execs in the selected namespace (and one on the host) while the enforcer is
    kill -9'ed and restarted 5 times: zero execs succeed in the namespace, every host exec does."""
    sock, _ = holder
    stop = tmp_path / "stop"
    loop = (f'ok=0; n=0; while [ ! -e {stop} ]; do {copy} 2>/dev/null && ok=$((ok+1)); n=$((n+1)); done; '
            'echo "$ok $n"')
    proc = _harness(ns_a.mntns, copy, "deny", sock)
    host = subprocess.Popen(["sh", "-c", loop], stdout=subprocess.PIPE, text=True)
    restarts: list[float] = []
    try:
        ns_a.send(loop)
        for _ in range(5):
            time.sleep(0.5)
            proc.kill()
            proc.wait(10)
            t0 = time.monotonic()
            proc = _harness(ns_a.mntns, copy, "deny", sock)
            restarts.append(time.monotonic() - t0)
        time.sleep(0.5)
        stop.touch()
        ok, n = map(int, ns_a.result(60)[1].split())
        host_ok, host_n = map(int, host.communicate(timeout=60)[0].split())
    finally:
        stop.touch()
        _kill(proc)
        _kill(host)  # type: ignore[arg-type]
    print(f"\nenforcer kill -9 x5: {n} blocked execs tried in the namespace, {ok} succeeded; "
          f"host {host_ok}/{host_n} succeeded; respawn to ready {', '.join(f'{r:.2f}s' for r in restarts)}")
    assert n > 0 and ok == 0
    assert host_n > 0 and host_ok == host_n


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
                                      "Capabilities": "eBPF Signal", **signal_presets()}
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
