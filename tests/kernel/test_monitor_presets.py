"""The monitor's preset records on the real kernel: a fileless exec (memfd, deleted file), another
process's environ, an executable anonymous mapping (mmap; mprotect where the maple tree finds the
mapping), an exec entered from outside the pid namespace (nsenter) — each recorded only where a
namespace wants that preset, and none of their innocent look-alikes.

The programs are the monitor's own (``probes`` fixture: loaded in this process, detached after);
every attack runs in ``unshare`` namespaces this test starts.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from services.monitor.decode.exec_record import DecodeContext
from services.monitor.decode.records import RecordDecoder
from services.monitor.loader import PRESET_ATTACHMENTS, Probes
from shared.bpf.btf import Btf
from shared.bpf.headers import maple_cflags
from shared.presets import PRESETS
from tests.kernel.nsutil import bound

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(300)]

PY = os.path.realpath(sys.executable)
ALL_PRESETS = sum(info.vis_bit for info in PRESETS.values())
ATTACK = r'''
import ctypes, mmap, os, shutil, subprocess, sys
what = sys.argv[1:]
print(os.stat("/proc/self/ns/mnt").st_ino, flush=True)
if "env" in what:
    child = subprocess.Popen(["sleep", "30"])
    open(f"/proc/{child.pid}/environ", "rb").read()
    open("/proc/self/environ", "rb").read()                       # its own: fine
    child.kill(); child.wait()
if "anon" in what:
    mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
              prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    with open(sys.argv[0], "rb") as f:                             # a file's executable mapping: fine
        mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)
    buf = mmap.mmap(-1, 8192, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(addr), 4096, 7) == 0
if "fileless" in what:
    fd = os.memfd_create("payload", 0)
    os.write(fd, open("/usr/bin/true", "rb").read())
    for run in (lambda: os.execv(f"/proc/self/fd/{fd}", ["payload"]), lambda: os.execve(fd, ["payload"], {})):
        pid = os.fork()
        if pid == 0:
            run()
        assert os.waitpid(pid, 0)[1] == 0
    gone = sys.argv[0] + ".gone"
    shutil.copy("/usr/bin/true", gone)
    keep = os.open(gone, os.O_RDONLY)
    os.unlink(gone)
    pid = os.fork()
    if pid == 0:
        os.execv(f"/proc/self/fd/{keep}", ["gone"])
    assert os.waitpid(pid, 0)[1] == 0
    assert subprocess.run(["/usr/bin/true"]).returncode == 0        # a plain exec: fine
print("done", flush=True)
'''


def _attack(tmp_path: Path, *what: str) -> int:
    """Run the attack script in new mount and pid namespaces (its own /proc); its mntns."""
    script = tmp_path / "attack.py"
    script.write_text(ATTACK)
    out = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", PY, str(script), *what],
                         capture_output=True, text=True, timeout=bound(60))
    assert out.returncode == 0 and out.stdout.endswith("done\n"), out.stderr
    return int(out.stdout.split()[0])


def _presets(mon: Probes, records: list[bytes], mntns: int) -> list[dict[str, Any]]:
    """The preset events of ``mntns`` among everything drained so far."""
    mon.drain()
    dec = RecordDecoder(DecodeContext("n1", "boot", 0))
    events = [dec.feed(r) for r in records]
    return [e for e in events if e and e["kind"] == "preset" and e["mntns"] == mntns]


def test_each_presets_attack_is_recorded_where_wanted(probes: tuple[Probes, list[bytes]], tmp_path: Path) -> None:
    mon, records = probes
    mon.set_visibility({0: ALL_PRESETS})      # every namespace not listed wants every preset
    assert len(mon.preset_programs) == len([a for a in PRESET_ATTACHMENTS if os.path.isdir(
        "/sys/kernel/tracing/events/" + a[1].replace(":", "/"))])
    mntns = _attack(tmp_path, "env", "anon", "fileless")
    got = _presets(mon, records, mntns)
    by = {name: [e for e in got if e["extra"]["preset"] == name] for name in PRESETS}

    [env] = by["protectEnv"]
    assert env["path"].startswith("/proc/") and env["path"].endswith("/environ") and env["exe"] == PY
    assert env["syscall"] in ("open", "openat") and env["ret"] >= 0 and env["extra"]["target_pid"] > 0

    mmaps = [e for e in by["anonMapExec"] if e["syscall"] == "mmap"]
    assert len(mmaps) == 1 and "PROT_EXEC" in mmaps[0]["extra"]["prot"]
    assert "MAP_ANONYMOUS" in mmaps[0]["extra"]["map_flags"] and mmaps[0]["exe"] == PY
    mprotects = [e for e in by["anonMapExec"] if e["syscall"] == "mprotect"]
    assert len(mprotects) == (1 if maple_cflags(Btf.load()) else 0)

    memfds = [e for e in by["filelessExec"] if e["extra"]["memfd"]]
    assert [e["path"] for e in memfds] == ["memfd:payload", "memfd:payload"]
    assert all(re.fullmatch(r"/(proc/self|dev)/fd/\d+", e["extra"]["filename"]) for e in memfds)
    assert all(e["ret"] == 0 and e["exe"] == "/memfd:payload (deleted)" and not e["extra"].get("dying")
               for e in memfds)
    [deleted] = [e for e in by["filelessExec"] if not e["extra"]["memfd"]]
    assert deleted["path"] == str(tmp_path / "attack.py.gone")
    assert by["exec"] == []                   # nothing came from outside the pid namespace


def test_an_exec_entered_from_outside_the_pid_namespace(probes: tuple[Probes, list[bytes]]) -> None:
    mon, records = probes
    mon.set_visibility({0: ALL_PRESETS})
    sleeper = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
                                "sleep", "60"])
    try:
        init = _child_of(sleeper.pid)
        mntns = os.stat(f"/proc/{init}/ns/mnt").st_ino
        entered = subprocess.run(["nsenter", "-t", str(init), "-m", "-p", "--", "/usr/bin/true"],
                                 capture_output=True, text=True, timeout=bound(20))
        assert entered.returncode == 0, entered.stderr
    finally:
        sleeper.kill()
        sleeper.wait(bound(10))
    got = _presets(mon, records, mntns)
    [entry] = [e for e in got if e["extra"]["preset"] == "exec"]
    assert (entry["path"], entry["extra"]["filename"], entry["extra"]["parent_comm"]) == (
        "/usr/bin/true", "/usr/bin/true", "nsenter")
    assert entry["ns_pid"] > 1 and entry["ns_ppid"] == 0    # its parent is outside; the sleeper (init) is not


def test_nothing_is_recorded_or_attached_where_no_preset_is_wanted(probes: tuple[Probes, list[bytes]],
                                                                  tmp_path: Path) -> None:
    mon, records = probes
    mon.set_visibility({0: ALL_PRESETS})
    mon.set_visibility({0: 1})                # process events only: no preset anywhere
    assert mon.preset_programs == []
    mntns = _attack(tmp_path, "env", "anon", "fileless")
    assert _presets(mon, records, mntns) == []


def _child_of(pid: int) -> int:
    """The first child of ``pid`` (unshare's forked child: pid 1 of the new namespace)."""
    for _ in range(200):
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError(f"{pid} has no child")
