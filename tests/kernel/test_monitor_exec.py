"""The monitor as a process, against the real kernel and a real nats-server.

Runs commands in fresh mount+pid namespaces and checks the exec events that arrive on NATS: result,
namespaces, namespaced pids, canonical caller executable (KubeArmor's Source) and the program path.
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared.codec import unpack
from shared.nats.bus import connect
from shared.nats.subjects import health, raw_events
from tests.conftest import NatsServer, require_root
from tests.kernel.bpfkit import prog_ids_of
from tests.kernel.nsutil import bound

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
NODE = "test-node"
SH = os.path.realpath("/usr/bin/sh")           # /usr/bin/dash on Debian
UNSHARE = os.path.realpath("/usr/bin/unshare")


@contextmanager
def namespace_shell(script: str) -> Iterator[int]:
    """``script`` run by a shell in new mount and pid namespaces, which prints its pid namespace first (that
    is yielded); a script ending in ``read done`` stays, as a container's init does, until the block ends."""
    proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "/usr/bin/sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield int(proc.stdout.readline())
    finally:
        if proc.stdin is not None:
            proc.stdin.close()                               # the namespace's shell ends
        proc.wait(timeout=bound(30))


def our_programs() -> list[dict[str, Any]]:
    """Loaded BPF programs of the monitor (names start with bwmon_)."""
    out = subprocess.run(["bpftool", "prog", "show", "-j"], check=True, capture_output=True, text=True)
    return [p for p in json.loads(out.stdout) if str(p.get("name", "")).startswith("bwmon_")]


class Monitor:
    """A running ``python -m services.monitor`` plus a NATS client watching its subjects."""

    def __init__(self, proc: subprocess.Popen[bytes], nc: Any, raw_sub: Any, log: Path) -> None:
        self.proc, self.nc, self.raw_sub, self.log = proc, nc, raw_sub, log

    async def flush(self, quiet: float = 0.5) -> None:
        """Drop every raw batch received until none arrives for ``quiet`` seconds."""
        while True:
            try:
                await self.raw_sub.next_msg(timeout=quiet)
            except Exception:  # nats TimeoutError: quiet
                return

    async def events_until(self, done: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Collect raw events until ``done(events)`` is true (or fail after ``timeout``)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + bound(timeout)
        while not done(seen):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; got {len(seen)} events"
            try:
                msg = await self.raw_sub.next_msg(timeout=min(left, 1.0))
            except Exception:  # nats TimeoutError: keep waiting until the deadline
                continue
            seen.extend(unpack(msg.data)["events"])
        return seen


@pytest.fixture
async def monitor(nats_server: NatsServer, tmp_path: Path, request: Any) -> AsyncIterator[Monitor]:
    """The monitor service; a test parametrized with ``monitor_env`` adds those variables."""
    require_root()
    callspec = getattr(request.node, "callspec", None)
    extra_env = callspec.params.get("monitor_env", {}) if callspec is not None else {}
    nc = await connect(nats_server.url, "test")
    beats = await nc.subscribe(health("monitor", NODE))
    raw_sub = await nc.subscribe(raw_events(NODE))
    log = tmp_path / "monitor.log"
    env = {**os.environ, "BULWARK_NATS_URL": nats_server.url, "BULWARK_NODE_NAME": NODE,
           "BULWARK_DATA_DIR": str(tmp_path / "data"), **extra_env}
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "services.monitor"], cwd=REPO, env=env, stderr=err)
    loaded: set[int] = set()
    try:
        await beats.next_msg(timeout=bound(120))   # the first heartbeat comes once programs are attached
        loaded = prog_ids_of(proc.pid)
        assert len(loaded) >= 25, loaded
        yield Monitor(proc, nc, raw_sub, log)
    finally:
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(bound(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        finally:
            if proc.poll() is None:   # the wait itself was interrupted (the test's timeout): no orphan
                proc.kill()
                proc.wait()
        await nc.close()
        left = [p for p in our_programs() if p["id"] in loaded]   # others' monitors may run meanwhile
        assert not left, f"BPF programs left attached: {left}"
        assert rc == 0, log.read_text()[-3000:]


async def test_exec_events_in_new_namespaces(monitor: Monitor, tmp_path: Path) -> None:
    notexec = tmp_path / "xyz" / "notexec"
    notexec.parent.mkdir()
    notexec.write_text("#!/bin/sh\necho should-not-run\n")
    notexec.chmod(0o644)
    mnt = tmp_path / "m"                # two nested mounts, only in the new mount namespace
    mnt.mkdir()
    inner_sh = mnt / "inner" / "sh2"
    script = (f"stat -L -c %i /proc/self/ns/mnt /proc/self/ns/pid; /usr/bin/true; "
              f"cd {notexec.parent} && ./notexec; {notexec}; "
              f"mount -t tmpfs none {mnt} && mkdir {mnt}/inner && mount -t tmpfs none {mnt}/inner && "
              f"cp {SH} {inner_sh} && {inner_sh} -c /usr/bin/true")
    started = time.monotonic()
    out = subprocess.run(["unshare", "--mount", "--pid", "--fork", "/usr/bin/sh", "-c", script],
                         capture_output=True, text=True, timeout=bound(30))
    ran = time.monotonic()
    mntns, pidns = (int(x) for x in out.stdout.split()[:2])
    assert mntns != os.stat("/proc/self/ns/mnt").st_ino and "Permission denied" in out.stderr

    def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["pidns"] == pidns and e["kind"] == "exec"]

    events = await monitor.events_until(lambda evs: len(
        [e for e in mine(evs) if e["path"] in ("/usr/bin/true", str(notexec))]) >= 4)
    arrived = time.monotonic()
    ours = mine(events)
    by_path = {}
    for e in ours:
        by_path.setdefault(e["path"], []).append(e)

    for e in ours:  # every exec in the new namespaces
        assert (e["kind"], e["node"], e["mntns"], e["pidns"]) == ("exec", NODE, mntns, pidns)
        assert 1 <= e["ns_pid"] < 50 and e["pid"] != e["ns_pid"] and e["syscall"] == "execve"
        assert e["event_id"].startswith(f"{NODE}:") and abs(e["ts_ns"] - time.time_ns()) < 60e9

    [sh] = by_path["/usr/bin/sh"]     # unshare's child becomes pid 1 of the new pid namespace
    assert (sh["exe"], sh["ret"], sh["ns_pid"], sh["ns_ppid"], sh["comm"]) == (UNSHARE, 0, 1, 0, "unshare")

    [true, nested] = by_path["/usr/bin/true"]  # run by a forked child of the shell (pid 1)
    assert nested["exe"] == str(inner_sh)        # the caller's path walked across two mounts
    assert (true["exe"], true["parent_exe"], true["ret"], true["ns_ppid"]) == (SH, SH, 0, 1)
    assert true["ns_pid"] > 1 and true["comm"] == "sh" and true["cwd"] == os.getcwd()

    failed = by_path[str(notexec)]     # once relative (resolved against cwd), once absolute
    assert len(failed) == 2 and all(e["ret"] == -13 and e["exe"] == SH for e in failed)
    relative = [e for e in failed if e["extra"].get("filename") == "./notexec"]
    assert len(relative) == 1 and relative[0]["cwd"] == str(notexec.parent)
    print(f"\ncommand took {ran - started:.3f}s; events on NATS {1000 * (arrived - ran):.1f} ms after it ended")


async def test_execveat_and_a_non_leader_thread(monitor: Monitor) -> None:
    code = ("import os, threading\n"
            "fd = os.open('/usr/bin/true', os.O_RDONLY)\n"
            "t = threading.Thread(target=lambda: os.execve(fd, ['true'], {}))\n"
            "t.start(); t.join()\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=bound(30))
    assert proc.returncode == 0

    events = await monitor.events_until(lambda evs: any(
        e["syscall"] == "execveat" and e["exe"] == os.path.realpath(sys.executable) for e in evs))
    [ev] = [e for e in events if e["syscall"] == "execveat" and e["exe"] == os.path.realpath(sys.executable)]
    assert ev["ret"] == 0 and ev["flags"] & 0x1000      # fexecve: execveat(fd, "", AT_EMPTY_PATH)
    assert ev["tid"] != ev["pid"]                        # came from a second thread, stash moved at exec
    # the name was empty: the kernel's own name for the program (sched_process_exec) fills in
    assert ev["path"] == f"/dev/fd/{ev['extra']['dirfd']}" and ev["extra"]["filename_from_kernel"]


def _run_on_a_pty(argv: list[str]) -> tuple[str, str]:
    """Run ``argv`` as the session leader of a fresh pty (its controlling tty); (tty name, output)."""
    master, slave = os.openpty()
    name = os.ttyname(slave)                       # /dev/pts/N; the kernel calls it ptsN

    def own_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_tty)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:                        # EIO: every writer is gone
                break
            if not chunk:
                break
            out += chunk
        proc.wait(timeout=bound(30))
    finally:
        os.close(master)
    return name.replace("/dev/pts/", "pts"), out.decode(errors="replace")


async def test_execs_name_the_controlling_tty(monitor: Monitor) -> None:
    tty, out = _run_on_a_pty(["unshare", "--mount", "--pid", "--fork", "/usr/bin/sh", "-c",
                              "stat -L -c %i /proc/self/ns/pid; /usr/bin/true"])
    pidns = int(out.split()[0])

    def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["pidns"] == pidns and e["kind"] == "exec" and e["path"] == "/usr/bin/true"]

    events = await monitor.events_until(lambda evs: bool(mine(evs)))
    [true] = mine(events)
    assert true["extra"].get("tty") == tty, true


async def test_execs_name_the_user_as_the_namespace_sees_it(monitor: Monitor, tmp_path: Path) -> None:
    """uid 4242 is "modelrunner" in a mount namespace whose /etc/passwd says so (the command's own
    process is gone by the time its event is decoded: its parent, alive in the same namespace, is read)."""
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\nmodelrunner:x:4242:4242::/nonexistent:/bin/false\n")
    passwd.chmod(0o644)
    # The command runs in a mount namespace made after the bind mount, so nothing in it can have been
    # seen with the host's passwd (a namespace's table is read once, then only for unknown uids).
    inner = "setpriv --reuid 4242 --regid 4242 --clear-groups /usr/bin/true && read done"
    script = (f"mount --bind {passwd} /etc/passwd && stat -L -c %i /proc/self/ns/pid && "
              f"exec unshare --mount /usr/bin/sh -c '{inner}'")
    with namespace_shell(script) as pidns:

        def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in events if e["pidns"] == pidns and e["kind"] == "exec" and e["path"] == "/usr/bin/true"]

        events = await monitor.events_until(lambda evs: bool(mine(evs)))
        [true] = mine(events)
        assert (true["uid"], true["extra"].get("user")) == (4242, "modelrunner"), true
    try:                                                     # the host does not name uid 4242 so
        assert pwd.getpwuid(4242).pw_name != "modelrunner"
    except KeyError:
        pass


async def test_records_name_their_process_arguments_and_execs_their_program_owner(monitor: Monitor,
                                                                                  tmp_path: Path) -> None:
    """A process's later records carry its arguments (KubeArmor's Source is the command line), read
    from its argv; an exec carries the owner of the program asked for, a script's own (not its
    interpreter's), read in the workload's mount namespace."""
    prog = tmp_path / "owned-cat"
    shutil.copy("/usr/bin/cat", prog)
    script = tmp_path / "owned-script"
    script.write_text("#!/bin/sh\nexit 0\n")
    data = tmp_path / "data.txt"
    data.write_text("x\n")
    for path, uid in ((prog, 4243), (script, 4244)):
        os.chown(path, uid, uid)
        path.chmod(0o755)
    # the namespace's shell stays (as a container's init does) until the events are in
    cmd = f"stat -L -c %i /proc/self/ns/pid && {prog} -u {data} >/dev/null && {script} one two && read done"
    with namespace_shell(cmd) as pidns:

        def opened(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [e for e in events if e["pidns"] == pidns and e["kind"] == "file" and e["path"] == str(data)]

        def execs(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {e["path"]: e for e in events if e["pidns"] == pidns and e["kind"] == "exec"}

        events = await monitor.events_until(lambda evs: bool(opened(evs)) and str(script) in execs(evs))
    [read] = opened(events)
    assert (read["exe"], read["proc_args"]) == (str(prog), f"-u {data}")
    ran = execs(events)
    assert ran[str(prog)]["extra"].get("owner_uid") == 4243, ran[str(prog)]
    assert ran[str(script)]["extra"].get("owner_uid") == 4244, ran[str(script)]
    assert ran[str(prog)]["proc_args"] == ""                 # an exec names its caller without arguments


async def test_an_exec_through_symlinks_names_the_file_it_ran(monitor: Monitor, tmp_path: Path) -> None:
    """The program asked for through symlinks (a relative one, then an absolute one whose target exists
    only in the workload's mount namespace, on a tmpfs mounted there) gets ``real_path`` as that namespace
    resolves it; a program asked for by its own path gets none. A refused exec (not executable) too."""
    mnt = tmp_path / "ns-only"
    mnt.mkdir()
    real, link, hop, denied, denied_link = (mnt / "real-true", mnt / "link-true", tmp_path / "hop",
                                            mnt / "not-exec", mnt / "link-not-exec")
    cmd = (f"stat -L -c %i /proc/self/ns/pid && mount -t tmpfs none {mnt} && cp /usr/bin/true {real} && "
           f"ln -s real-true {link} && ln -sf {link} {hop} && touch {denied} && ln -s not-exec {denied_link} && "
           f"{hop} && {real} && ! {denied_link} 2>/dev/null && read done")
    with namespace_shell(cmd) as pidns:

        def execs(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {e["path"]: e for e in events if e["pidns"] == pidns and e["kind"] == "exec"}

        events = await monitor.events_until(lambda evs: {str(hop), str(real), str(denied_link)} <= set(execs(evs)))
    ran = execs(events)
    assert not hop.exists()                                   # the host's view: the target is not there
    assert ran[str(hop)]["extra"].get("real_path") == str(real), ran[str(hop)]
    assert "real_path" not in ran[str(real)]["extra"], ran[str(real)]
    assert ran[str(denied_link)]["ret"] < 0 and ran[str(denied_link)]["extra"].get("real_path") == str(denied)
