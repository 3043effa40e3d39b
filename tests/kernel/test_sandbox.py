"""``bulwark run``'s sandbox: when start_sandbox returns, everything it does before the command has
happened (so the launcher can register the workload from that instant: its logs start at the command)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from bulwark.sandbox import GATE_REFUSED, start_sandbox
from tests.conftest import require_root

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]


def test_the_command_waits_at_the_gate_with_proc_mounted_when_start_returns() -> None:
    require_root()
    sandbox = start_sandbox(["/usr/bin/true"], hostname="sandbox-test")
    try:
        init = sandbox.init_pid
        children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
        assert len(children) == 1, children  # the command, forked by init
        command = children[0]
        # it said so right before its read(2) of the gate: let it get there (x86-64 read is syscall 0)
        while Path(f"/proc/{command}/syscall").read_text().split()[0] != "0":
            time.sleep(0.01)
        assert Path(f"/proc/{command}/exe").resolve() != Path("/usr/bin/true"), "the command ran before the gate"
        mounts = Path(f"/proc/{init}/mountinfo").read_text().splitlines()
        assert any(line.split()[4] == "/proc" and " - proc " in line for line in mounts), mounts
    finally:
        sandbox.refuse()
        assert sandbox.wait() == GATE_REFUSED
