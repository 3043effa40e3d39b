"""What the BPF hand-over tests share: a real fd holder, enforcer subprocesses (kill -9'able), and
waiting for dropped programs to be freed. Every process is stopped by pid; stopping the holder closes
every fd it holds, so no program outlives a test."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bulwark.procs import terminate
from services.enforcer.holding import HOLDER_ENV
from tests.kernel.bpfkit import PY, REPO, still_loaded
from tests.kernel.nsutil import bound

__all__ = ["HARNESS", "Enforcers", "gone", "holder_process", "start_holder"]

# argv: kind (signal|bpflsm), mntns, btf tree, mode (block|empty), exec target (bpflsm)
HARNESS = """
import sys, time
from pathlib import Path
from tests.kernel.bpfkit import net_rule
from tests.kernel.nsutil import block_exec, ruleset
kind, mntns, tree, mode, target = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]
if kind == "signal":
    from services.enforcer.signal.enforcer import SignalEnforcer as Enforcer
    rules = [net_rule("udp")]
else:
    from services.enforcer.bpflsm import BpfLsmEnforcer as Enforcer
    rules = [block_exec(target)]
enf = Enforcer(btf_tree=tree)
enf.apply(ruleset(1, a=(mntns, rules if mode == "block" else [])))
print("ready", flush=True)
while True:
    time.sleep(0.1)
    getattr(enf, "keep_held", lambda: None)()  # what the service does every second
"""


def start_holder(sock: str, log: Path) -> subprocess.Popen[str]:
    """``bulwark.fdholder`` on ``sock``, once it listens."""
    proc = subprocess.Popen([PY, "-m", "bulwark.fdholder", sock], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=open(log, "wb"), text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    except BaseException:
        terminate(proc, grace=5)
        raise
    return proc


@contextmanager
def holder_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A holder on a private socket, stopped by pid at the end (it closes every fd it holds)."""
    sock = str(tmp_path / "holder.sock")
    proc = start_holder(sock, tmp_path / "holder.log")
    try:
        yield sock, proc
    finally:
        terminate(proc, grace=5)


class Enforcers:
    """Enforcer subprocesses of one kind started by a test, each killed by pid at the end."""

    def __init__(self, kind: str, mntns: int, btf_tree: Path, sock: str, log: Path, target: str = "") -> None:
        self.args = [kind, str(mntns), str(btf_tree)]
        self.target, self.log = target, log
        self.env = {**os.environ, HOLDER_ENV: sock}
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, mode: str = "block") -> subprocess.Popen[str]:
        """A new enforcer; returns once its rules are applied (and its programs handed to the holder)."""
        proc = subprocess.Popen([PY, "-c", HARNESS, *self.args, mode, self.target], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", self.log.read_text()[-3000:]
        return proc

    def kill_all(self) -> None:
        """kill -9 every enforcer still running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def gone(ids: set[int]) -> set[int]:
    """Which of ``ids`` the kernel still has once their last fds closed (freeing is deferred: RCU)."""
    deadline = time.monotonic() + bound(10)
    while still_loaded(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return still_loaded(ids)
