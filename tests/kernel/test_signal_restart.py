"""The signal enforcer fails closed across kill -9 and restarts when a holder keeps its programs (issue 14).

A real ``bulwark.fdholder`` and real enforcer subprocesses: the enforcer hands the fds that keep its
programs attached (and its maps alive) to the holder; kill -9 of the enforcer leaves them attached with
the last rules, and the next enforcer drops the older generation only once its own programs are attached
and armed. The programs act only in the test's own mount namespace (a forked loop of UDP socket()
calls); every process the test starts is stopped by pid in ``finally`` blocks, and stopping the holder
unloads every program that is left.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulwark.procs import terminate
from services.enforcer.signal.enforcer import SignalEnforcer
from tests.kernel.bpfkit import (
    held_programs,
    inet_blocked,
    inet_refusal_expected,
    net_rule,
    poll_reports,
    signal_programs,
    still_loaded,
)
from tests.kernel.holdkit import Enforcers, gone, holder_process, start_holder
from tests.kernel.nsutil import NsShell, bound, host_run, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(300)]
PY = sys.executable

# A selected workload's loop: each child creates a UDP socket (blocked: refused, or SIGKILL at the hook) and exits 0
# if it survived. Prints "<survived> <tried>" once the stop file exists.
LOOP = """
import os, socket, sys
ok = n = 0
while not os.path.exists(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        except OSError:             # refused
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    n += 1
    ok += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
print(ok, n, flush=True)
"""

UDP = f"{PY} -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM); print(\"alive\")'"


def _blocked(result: tuple[int, str]) -> bool:
    """The UDP socket was blocked (refused or killed, as this kernel allows)."""
    return inet_blocked(result, inet_refusal_expected())


@pytest.fixture
def ns_a() -> Iterator[NsShell]:
    shell = NsShell()
    try:
        yield shell
    finally:
        shell.close()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with holder_process(tmp_path) as held:
        yield held


@pytest.fixture
def enforcers(ns_a: NsShell, btf_tree: Path, holder: tuple[str, subprocess.Popen[str]],
              tmp_path: Path) -> Iterator[Enforcers]:
    run = Enforcers("signal", ns_a.mntns, btf_tree, holder[0], tmp_path / "enforcers.log")
    try:
        yield run
    finally:
        run.kill_all()


def _bwenf(pid: int) -> set[int]:
    """Ids of the signal programs process ``pid`` holds fds of."""
    return held_programs(lambda line: "bwenf_" in line, pid)


def test_no_blocked_socket_survives_enforcer_kills(ns_a, holder, enforcers, tmp_path) -> None:
    """A loop of blocked UDP socket() calls in the selected namespace (and the same loop on the host)
    while the enforcer is kill -9'ed and restarted 3 times: zero survive in the namespace, every one on
    the host does; after each restart the older generation's programs are gone, the new one's held."""
    _, holder_proc = holder
    script, stop = tmp_path / "loop.py", tmp_path / "stop"
    script.write_text(LOOP)
    seen: set[int] = set()
    host = None
    try:
        proc = enforcers.start()
        gen = _bwenf(holder_proc.pid)
        seen |= gen
        ns_a.send(f"{PY} {script} {stop}")
        host = subprocess.Popen([PY, str(script), str(stop)], stdout=subprocess.PIPE, text=True)
        generations = [gen]
        for _ in range(3):
            time.sleep(0.5)
            proc.kill()  # kill -9 mid-loop: no cleanup of any kind runs in the enforcer
            proc.wait(10)
            time.sleep(0.5)  # no enforcer at all for a while (then it compiles: more of the window)
            proc = enforcers.start()
            gen = _bwenf(holder_proc.pid)
            seen |= gen
            generations.append(gen)
        time.sleep(0.5)
        stop.touch()
        ok, n = map(int, ns_a.result(bound(60))[1].split())
        host_ok, host_n = map(int, host.communicate(timeout=bound(60))[0].split())
    finally:
        stop.touch()
        if host is not None and host.poll() is None:
            host.kill()
            host.wait(5)
    print(f"\nsignal enforcer kill -9 x3: {n} blocked socket() calls in the namespace, {ok} survived; "
          f"host {host_ok}/{host_n} survived; generations {generations}")
    assert n > 0 and ok == 0
    assert host_n > 0 and host_ok == host_n
    for older, newer in zip(generations, generations[1:], strict=False):
        assert len(older) == len(newer) == signal_programs() and not older & newer
        assert gone(older) == set()  # dropped once the next generation was armed
    assert still_loaded(generations[-1]) == generations[-1]
    enforcers.kill_all()
    terminate(holder_proc, grace=5)  # the full stop
    assert gone(seen) == set()
    assert ns_a.run(UDP) == (0, "alive")


def test_rules_selecting_nothing_release_the_held_programs(ns_a, holder, enforcers) -> None:
    """The programs of a killed enforcer keep killing; the next enforcer, whose rules select nothing
    (it loads nothing), drops them."""
    _, holder_proc = holder
    enforcers.start()
    held = _bwenf(holder_proc.pid)
    assert len(held) == signal_programs()
    enforcers.kill_all()
    assert _blocked(ns_a.run(UDP))  # no enforcer: the held programs still kill
    assert host_run(UDP) == (0, "alive")
    enforcers.start("empty")  # the truth now: nothing to enforce
    assert _bwenf(holder_proc.pid) == set() and gone(held) == set()
    assert ns_a.run(UDP) == (0, "alive")


def test_detach_leaves_the_programs_to_the_holder_and_close_releases_them(ns_a, holder, btf_tree) -> None:
    """``detach`` (the service's SIGTERM: a restart or upgrade) leaves our programs killing with the holder;
    the next enforcer's programs replace them; its ``close`` (a full stop) detaches every copy."""
    sock, holder_proc = holder
    first, second = SignalEnforcer(btf_tree=btf_tree, holder=sock), SignalEnforcer(btf_tree=btf_tree, holder=sock)
    rules = ruleset(1, a=(ns_a.mntns, [net_rule("udp")]))
    try:
        first.apply(rules)
        held = _bwenf(holder_proc.pid)
        assert len(held) == signal_programs()
        first.detach()
        assert _bwenf(os.getpid()) == set() and still_loaded(held) == held
        assert _blocked(ns_a.run(UDP)) and host_run(UDP) == (0, "alive")
        second.apply(rules)
        assert gone(held) == set() and len(_bwenf(holder_proc.pid)) == signal_programs()
        assert second.stats()["reports_orphaned"] == 1  # the kill while no enforcer ran: drained, counted
        assert _blocked(ns_a.run(UDP))
        assert [r.mntns for r in poll_reports(second, 1)] == [ns_a.mntns]  # ours: reported as usual
        assert second.stats()["reports_orphaned"] == 1
        second.close()
        assert _bwenf(holder_proc.pid) == set() and _bwenf(os.getpid()) == set()
        assert ns_a.run(UDP) == (0, "alive")
    finally:
        first.close()
        second.close()


def test_a_restarted_holder_gets_the_programs_back(ns_a, holder, enforcers, tmp_path) -> None:
    """kill -9 of the holder: the enforcer keeps its programs, hands them to the next holder, so a kill -9
    of the enforcer after that still fails closed."""
    sock, holder_proc = holder
    enforcers.start()
    held = _bwenf(holder_proc.pid)
    holder_proc.kill()
    holder_proc.wait(5)
    assert still_loaded(held) == held and _blocked(ns_a.run(UDP))  # the enforcer's own fds
    second = start_holder(sock, tmp_path / "holder2.log")
    try:
        deadline = time.monotonic() + bound(30)
        while _bwenf(second.pid) != held:  # handed over by keep_held (every 0.1 s in the harness)
            assert time.monotonic() < deadline, "the enforcer did not hand its programs to the new holder"
            time.sleep(0.1)
        enforcers.kill_all()
        assert _blocked(ns_a.run(UDP)) and host_run(UDP) == (0, "alive")
    finally:
        enforcers.kill_all()
        terminate(second, grace=5)
    assert gone(held) == set()
