"""The BPF-LSM enforcer's presets on a kernel that runs BPF-LSM (kernel-lab guests): a fileless exec, another
process's environ and an executable anonymous mapping (mmap, mprotect) refused inline with EPERM, only
in the selected mount namespace and only for a preset that Blocks; each refusal reported.

The enforcer is closed in a finalizer (no LSM program stays attached); the programs look at nothing
outside the namespaces in their map, and the tests only select ``unshare`` shells they started.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.bpflsm import BpfLsmEnforcer
from services.enforcer.reports.presets import PresetReport
from tests.kernel.bpfkit import poll_reports, preset_rule
from tests.kernel.nsutil import host_run, ruleset

# bcc under TCG: minutes
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.bpflsm,
              pytest.mark.timeout(900)]
PY = sys.executable
EPERM = "Operation not permitted"
MEMFD = (f"{PY} -c 'import os; fd = os.memfd_create(\"payload\", 0); "
         "os.write(fd, open(\"/usr/bin/true\", \"rb\").read()); os.execv(f\"/proc/self/fd/{fd}\", [\"payload\"])' "
         "2>&1 | tail -1")
MMAP = (f"{PY} -c 'import mmap; mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, "
        "prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); print(\"alive\")' 2>&1 | tail -1")
MPROTECT = (f"{PY} -c 'import ctypes, mmap; b = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, "
            "prot=mmap.PROT_READ | mmap.PROT_WRITE); a = ctypes.addressof(ctypes.c_char.from_buffer(b)); "
            "r = ctypes.CDLL(None, use_errno=True).mprotect(ctypes.c_void_p(a), 4096, 7); "
            "print(\"alive\", r, ctypes.get_errno())'")
FILE_EXEC_MAP = (f"{PY} -c 'import mmap; f = open(\"/usr/bin/true\", \"rb\"); "
                 "mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC); "
                 "print(\"alive\")'")


def deleted_exec(tmp: Path) -> str:
    gone = tmp / "gone-true"
    return (f"cp /usr/bin/true {gone} && {PY} -c 'import os; fd = os.open(\"{gone}\", os.O_RDONLY); "
            f"os.unlink(\"{gone}\"); os.execv(f\"/proc/self/fd/{{fd}}\", [\"gone\"])' 2>&1 | tail -1")


@pytest.fixture(scope="module")
def loaded(btf_tree: Path) -> Iterator[BpfLsmEnforcer]:
    """One enforcer for the module (compiling the programs is slow under emulation), closed at the end."""
    enf = BpfLsmEnforcer(btf_tree=btf_tree)
    try:
        yield enf
    finally:
        enf.close()


@pytest.fixture
def lsm(loaded: BpfLsmEnforcer) -> Iterator[BpfLsmEnforcer]:
    """The module's enforcer, with no rules and no reports left after each test."""
    loaded.take_reports()
    try:
        yield loaded
    finally:
        loaded.apply(ruleset(0))
        time.sleep(0.1)
        loaded.take_reports()


def _presets(enf: BpfLsmEnforcer, n: int) -> list[PresetReport]:
    reports = poll_reports(enf, n)
    assert all(isinstance(r, PresetReport) for r in reports), reports
    return reports


def test_a_fileless_exec_is_refused_only_where_a_preset_blocks_it(lsm, shells, tmp_path) -> None:
    a, b = shells
    lsm.apply(ruleset(1, a=(a.mntns, [preset_rule("filelessExec")]),
                      b=(b.mntns, [preset_rule("filelessExec", "Audit")])))
    before = lsm.stats()["refused"]
    assert EPERM in a.run(MEMFD)[1]
    assert EPERM in a.run(deleted_exec(tmp_path))[1]
    assert a.run("/usr/bin/true") == (0, "")                       # a program with a path
    assert b.run(MEMFD) == (0, "") and host_run(MEMFD) == (0, "")   # Audit (the monitor reports it); the host
    memfd, deleted = _presets(lsm, 2)
    assert (memfd.preset, memfd.killed, memfd.resource) == ("filelessExec", False, "memfd:payload")
    assert memfd.exe == os.path.realpath(PY)                       # refused before the exec: the caller
    assert memfd.head.mntns == a.mntns and memfd.ref is not None and memfd.ref.policy == "preset-filelessExec"
    assert deleted.resource == str(tmp_path / "gone-true") and deleted.details == {"memfd": False}
    ev = memfd.to_raw_event("n1", 0, "boot")
    assert (ev.kind, ev.ret, ev.extra["enforcer"], ev.extra["refused"]) == ("enforce", -1, "BPFLSM", True)
    assert ev.extra["operation"] == "Preset" and ev.extra["preset"] == "filelessExec"
    assert lsm.stats()["refused"] == before + 2


def test_another_processes_environ_is_refused_its_own_is_not(lsm, shells) -> None:
    a, b = shells
    lsm.apply(ruleset(1, a=(a.mntns, [preset_rule("protectEnv")]), b=(b.mntns, [])))
    rc, out = a.run("cat /proc/$$/environ > /dev/null")             # the shell's: another process's
    assert rc != 0 and EPERM in out
    assert a.run("cat /proc/self/environ > /dev/null") == (0, "")
    assert a.run(f"{PY} -c 'import os; open(f\"/proc/{{os.getpid()}}/environ\").read()'") == (0, "")
    assert b.run("cat /proc/$$/environ > /dev/null") == (0, "")
    [env] = _presets(lsm, 1)
    assert env.preset == "protectEnv" and env.resource.startswith("/proc/") and env.resource.endswith("/environ")
    assert env.details["target_pid"] > 0 and env.syscall == "openat"


def test_an_executable_anonymous_mapping_is_refused(lsm, shells) -> None:
    a, b = shells
    lsm.apply(ruleset(1, a=(a.mntns, [preset_rule("anonMapExec")]), b=(b.mntns, [])))
    assert EPERM in a.run(MMAP)[1]
    assert a.run(MPROTECT) == (0, "alive -1 1")                     # mprotect fails with EPERM
    assert a.run(FILE_EXEC_MAP) == (0, "alive")                     # a file's executable mapping
    assert b.run(MMAP) == (0, "alive") and host_run(MMAP) == (0, "alive")
    mmap_refusal, mprotect_refusal = _presets(lsm, 2)
    assert (mmap_refusal.syscall, mmap_refusal.details["prot"]) == ("mmap", "PROT_READ|PROT_WRITE|PROT_EXEC")
    assert mprotect_refusal.syscall == "mprotect" and not mprotect_refusal.killed


def test_presets_follow_the_rule_set(lsm, shells) -> None:
    a, _ = shells
    lsm.apply(ruleset(1, a=(a.mntns, [preset_rule("anonMapExec")])))
    assert EPERM in a.run(MMAP)[1]
    lsm.apply(ruleset(2, a=(a.mntns, [preset_rule("anonMapExec", "Audit")])))
    assert a.run(MMAP) == (0, "alive")
    lsm.apply(ruleset(3, a=(a.mntns, [preset_rule("anonMapExec")])))
    assert EPERM in a.run(MMAP)[1]
    lsm.apply(ruleset(4, a=(a.mntns, [])))
    assert a.run(MMAP) == (0, "alive")
