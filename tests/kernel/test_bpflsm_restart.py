"""The BPF-LSM enforcer fails closed across kill -9 and restarts with the holder (issue 14; kernel-lab
guests: this host's kernel refuses BPF-LSM).

The same hand-over as the signal enforcer's (``services.enforcer.bpfhold``): a loop of refused execs of
a private copy of ``true`` in the test's own mount namespace while the enforcer is kill -9'ed and
restarted; the programs refuse only in that namespace, every process is stopped by pid, and stopping the
holder unloads whatever is left.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from bulwark.procs import terminate
from services.enforcer.bpflsm.enforcer import HOOKS
from tests.kernel.bpfkit import held_programs
from tests.kernel.holdkit import Enforcers, gone, holder_process
from tests.kernel.nsutil import NsShell, bound, host_run, private_copy

# bcc under TCG: minutes
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.bpflsm,
              pytest.mark.timeout(1800)]
EPERM_RC = 126  # sh: a refused exec


@pytest.fixture
def ns_a() -> Iterator[NsShell]:
    shell = NsShell()
    try:
        yield shell
    finally:
        shell.close()


def _lsm(pid: int) -> set[int]:
    """Ids of the BPF-LSM programs process ``pid`` holds fds of."""
    return held_programs(lambda line: line.split()[1:2] == ["lsm"], pid)


def test_no_blocked_exec_succeeds_across_bpflsm_enforcer_kill(ns_a, tmp_path) -> None:
    """A loop of refused execs in the selected namespace while the enforcer is kill -9'ed and restarted:
    zero succeed; the older generation's programs are gone once the new one is armed; the host's execs
    all succeed; stopping the holder unloads everything."""
    copy = private_copy("/usr/bin/true", tmp_path, "bwtrue")
    stop = tmp_path / "stop"
    loop = (f'ok=0; n=0; while [ ! -e {stop} ]; do {copy} 2>/dev/null && ok=$((ok+1)); n=$((n+1)); done; '
            'echo "$ok $n"')
    host: subprocess.Popen[str] | None = None
    with holder_process(tmp_path) as (sock, holder_proc):
        run = Enforcers("bpflsm", ns_a.mntns, tmp_path / "bcc-btf", sock, tmp_path / "enforcers.log", copy)
        try:
            proc = run.start()
            first = _lsm(holder_proc.pid)
            ns_a.send(loop)
            host = subprocess.Popen(["sh", "-c", loop], stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            proc.kill()  # kill -9 mid-loop
            proc.wait(bound(10))
            time.sleep(1)
            run.start()  # compiles for a while under emulation: the window stays open that long
            second = _lsm(holder_proc.pid)
            time.sleep(1)
            stop.touch()
            ok, n = map(int, ns_a.result(bound(120))[1].split())
            host_ok, host_n = map(int, host.communicate(timeout=bound(120))[0].split())
        finally:
            stop.touch()
            if host is not None and host.poll() is None:
                host.kill()
                host.wait(5)
            run.kill_all()
        print(f"\nBPF-LSM enforcer kill -9: {n} refused execs tried in the namespace, {ok} succeeded; "
              f"host {host_ok}/{host_n}; generations {first} -> {second}")
        assert n > 0 and ok == 0
        assert host_n > 0 and host_ok == host_n
        assert len(first) == len(second) == len(HOOKS) and not first & second
        assert gone(first) == set()
        assert ns_a.run(copy, timeout=bound(30))[0] == EPERM_RC  # no enforcer: the held programs refuse
        terminate(holder_proc, grace=5)
    assert gone(first | second) == set()
    assert ns_a.run(copy, timeout=bound(30)) == (0, "")
    assert host_run(copy) == (0, "")
