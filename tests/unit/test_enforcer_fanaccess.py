"""What a thread blocked in an open asked for, read from /proc (services/enforcer/fanotify/access.py), with a
real child process that runs for a while and then blocks opening a FIFO (as a fanotify waiter does)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from services.enforcer.fanotify.access import open_access, open_flags

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers of x86_64")

BUSY_THEN_OPEN = """import os, sys, time
end = time.monotonic() + 0.3
print("busy", flush=True)
while time.monotonic() < end:
    pass
os.open(sys.argv[1], int(sys.argv[2]))
"""


def _start(fifo: Path, flags: int) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", BUSY_THEN_OPEN, str(fifo), str(flags)], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"busy\n"   # in its loop now
    return child


def _stop(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait(5)


@pytest.mark.parametrize(("flags", "access"), [(os.O_RDONLY, "read"), (os.O_WRONLY, "write")])
def test_a_running_thread_is_read_again_until_it_sleeps_in_its_open(tmp_path: Path, flags: int,
                                                                    access: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    child = _start(fifo, flags)
    try:
        assert open_access(child.pid, patience=0) == ""  # "running": no syscall to read yet
        assert open_access(child.pid, patience=10) == access
    finally:
        _stop(child)


def test_a_thread_that_is_gone_is_unknown() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    assert open_access(child.pid) == ""


def test_the_open_flags_say_whether_the_open_creates(tmp_path: Path) -> None:
    """A refused O_CREAT open may have created its file (services/enforcer/fanotify/creates.py)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    child = _start(fifo, os.O_WRONLY | os.O_CREAT)
    try:
        flags = open_flags(child.pid, patience=10)
        assert flags is not None and flags & os.O_CREAT and flags & os.O_ACCMODE == os.O_WRONLY
    finally:
        _stop(child)
