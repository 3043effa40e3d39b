"""The eBPF signal enforcer's presets on the real kernel: a fileless program is killed at exec, before its
first instruction; an anonymous mapping made executable at mmap (and mprotect, where the maple tree finds
the mapping) — only in the selected mount namespace, only for a preset that Blocks, each kill reported.

The enforcer is closed in a finalizer (no program stays attached); only processes in ``unshare``
shells the test starts can be killed.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.signal.enforcer import SignalEnforcer
from shared.bpf.btf import Btf
from shared.bpf.headers import maple_cflags
from tests.kernel.bpfkit import KILLED, poll_reports, preset_rule
from tests.kernel.nsutil import host_run, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(300)]
PY = sys.executable
MEMFD = (f"{PY} -c 'import os; fd = os.memfd_create(\"payload\", 0); "
         "os.write(fd, open(\"/usr/bin/true\", \"rb\").read()); os.execv(f\"/proc/self/fd/{fd}\", [\"payload\"])'")
MMAP = (f"{PY} -c 'import mmap; mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, "
        "prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); print(\"alive\")'")
MPROTECT = (f"{PY} -c 'import ctypes, mmap; b = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, "
            "prot=mmap.PROT_READ | mmap.PROT_WRITE); a = ctypes.addressof(ctypes.c_char.from_buffer(b)); "
            "r = ctypes.CDLL(None).mprotect(ctypes.c_void_p(a), 4096, 7); print(\"alive\", r)'")


def deleted_exec(tmp: Path) -> str:
    """Exec a copy of true whose only link was removed (through its descriptor)."""
    gone = tmp / "gone-true"
    return (f"cp /usr/bin/true {gone} && {PY} -c 'import os; fd = os.open(\"{gone}\", os.O_RDONLY); "
            f"os.unlink(\"{gone}\"); os.execv(f\"/proc/self/fd/{{fd}}\", [\"gone\"])'")


@pytest.fixture
def enforcer(btf_tree: Path) -> Iterator[SignalEnforcer]:
    enf = SignalEnforcer(btf_tree=btf_tree)
    try:
        yield enf
    finally:
        enf.close()


def test_a_fileless_exec_dies_only_where_a_preset_blocks_it(enforcer, shells, tmp_path) -> None:
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [preset_rule("filelessExec")]),
                           b=(b.mntns, [preset_rule("filelessExec", "Audit")])))
    assert "Preset:filelessExec" in enforcer.operations
    assert a.run(MEMFD)[0] == KILLED
    assert a.run(deleted_exec(tmp_path))[0] == KILLED
    assert a.run("/usr/bin/true") == (0, "")                 # a program with a path
    assert b.run(MEMFD) == (0, "")                           # Audit: only the monitor reports it
    assert host_run(MEMFD) == (0, "")
    memfd, deleted = poll_reports(enforcer, 2)
    assert (memfd.preset, memfd.killed, memfd.resource, memfd.exe) == (
        "filelessExec", True, "memfd:payload", "/memfd:payload (deleted)")
    assert memfd.head.mntns == a.mntns and memfd.ref is not None and memfd.ref.policy == "preset-filelessExec"
    assert (deleted.resource, deleted.details) == (str(tmp_path / "gone-true"), {"memfd": False})
    ev = memfd.to_raw_event("n1", 0, "boot")
    assert (ev.kind, ev.path, ev.ret, ev.syscall) == ("enforce", "memfd:payload", 0, "execve")
    assert ev.extra["operation"] == "Preset" and ev.extra["preset"] == "filelessExec"
    assert ev.extra["result"] == "Killed (SIGKILL)" and ev.extra["enforcer"] == "eBPF Signal"


def test_an_executable_anonymous_mapping_dies(enforcer, shells) -> None:
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [preset_rule("anonMapExec")]), b=(b.mntns, [])))
    maple = bool(maple_cflags(Btf.load()))
    assert ("Preset:anonMapExec" in enforcer.operations) == maple
    if not maple:
        pytest.skip("memory maps are no maple tree here: anonMapExec is not the signal enforcer's")
    assert a.run(MMAP)[0] == KILLED
    assert a.run(MPROTECT)[0] == KILLED
    assert a.run(f"{PY} -c 'print(\"alive\")'") == (0, "alive")   # the interpreter's own mappings are files'
    assert b.run(MMAP) == (0, "alive") and host_run(MMAP) == (0, "alive")
    mmap_kill, mprotect_kill = poll_reports(enforcer, 2)
    assert (mmap_kill.preset, mmap_kill.syscall, mmap_kill.resource) == ("anonMapExec", "mmap", "")
    assert mmap_kill.details == {"prot": "PROT_READ|PROT_WRITE|PROT_EXEC", "map_flags": "MAP_PRIVATE|MAP_ANONYMOUS"}
    assert mprotect_kill.syscall == "mprotect" and mprotect_kill.head.mntns == a.mntns


def test_presets_it_cannot_block_are_left_alone(enforcer, shells) -> None:
    """protectEnv and exec are not the signal enforcer's: a Block of them kills nothing (reported by the monitor)."""
    a, _ = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [preset_rule("protectEnv"), preset_rule("exec")])))
    assert "Preset:protectEnv" not in enforcer.operations and "Preset:exec" not in enforcer.operations
    assert a.run(f"cat /proc/{os.getpid()}/environ > /dev/null") == (0, "")
    assert poll_reports(enforcer, 1, timeout=0.5) == []
