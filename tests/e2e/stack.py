"""Run the whole Bulwark stack (``bulwark up``) for a test, on free ports, and tear it down."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bulwark.natsserver.process import free_port
from bulwark.procs import terminate
from tests.kernel.bpfkit import prog_ids_of

BIN = Path(sys.executable).parent
TIMEOUT_SCALE = float(os.environ.get("BULWARK_TIMEOUT_SCALE", "1"))


@dataclass
class Stack:
    """A running ``bulwark up`` and how to talk to it."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    rest_port: int
    grpc_port: int
    nats_port: int
    node: str
    env: dict[str, str]

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def nats_url(self, user: str = "admin") -> str:
        """The stack's NATS URL, as ``user`` when the stack gives every service its own NATS user
        (``BULWARK_NATS_AUTH``: their passwords are in the data directory), else without one."""
        passwords = self.data_dir / "nats-auth" / "passwords.json"
        if not passwords.exists():
            return f"nats://127.0.0.1:{self.nats_port}"
        return f"nats://{user}:{json.loads(passwords.read_text())[user]}@127.0.0.1:{self.nats_port}"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``bulwark`` CLI against this stack (``timeout`` stretched by ``BULWARK_TIMEOUT_SCALE``
        in the kernel lab's emulated guests: it stops hangs, not slowness)."""
        return subprocess.run([str(BIN / "bulwark"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout * TIMEOUT_SCALE)

    def logs(self) -> str:
        """Every service's log, for failure messages."""
        out = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def bpf_programs(self) -> set[int]:
        """Ids of the BPF programs the stack's processes hold now (their fds' fdinfo), so a test can check
        that they are gone after stop without counting programs that other processes load meanwhile."""
        return {prog for pid in _descendants(self.proc.pid) for prog in prog_ids_of(pid)}

    def stop(self) -> int:
        """SIGTERM ``bulwark up`` and wait; returns its exit status."""
        return terminate(self.proc, grace=30, group=True)


def _descendants(root: int) -> set[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def live_bpf_programs() -> set[int]:
    """Ids of every BPF program loaded now."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return {int(line.split(":")[0]) for line in out.splitlines() if line and line[0].isdigit()}


def start_stack(data_dir: Path, node: str = "e2e-node", btf_tree: Path | None = None,
                extra_env: dict[str, str] | None = None) -> Stack:
    """Start ``bulwark up`` in its own session with private ports and data (plus ``extra_env`` settings)."""
    rest, grpc, nats = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update({"BULWARK_DATA_DIR": str(data_dir), "BULWARK_REST_PORT": str(rest),
                "BULWARK_GRPC_PORT": str(grpc), "BULWARK_NATS_PORT": str(nats),
                "BULWARK_NATS_URL": f"nats://127.0.0.1:{nats}", "BULWARK_NODE_NAME": node})
    if btf_tree:
        env["BULWARK_BTF_TREE_DIR"] = str(btf_tree)
    env.update(extra_env or {})
    out = open(data_dir.parent / f"{data_dir.name}-up.log", "wb")
    proc = subprocess.Popen([str(BIN / "bulwark"), "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return Stack(proc, data_dir, rest, grpc, nats, node, env)


@contextlib.contextmanager
def healthy_stack(data_dir: Path, node: str = "e2e-node", extra_env: dict[str, str] | None = None,
                  drop_nats_url: bool = False, wait: float = 150) -> Iterator[Stack]:
    """A started ``bulwark up`` that ``bulwark status`` found healthy; stopped (exit 0 asserted) after.
    ``drop_nats_url``: the CLI finds the launcher's NATS user in the data directory (NATS auth)."""
    from tests.conftest import require_root

    require_root()
    if not shutil.which("bpftool"):
        pytest.skip("bpftool missing (make setup installs it)")
    s = start_stack(data_dir, node=node, extra_env=extra_env)
    if drop_nats_url:
        s.env.pop("BULWARK_NATS_URL")
    try:
        status = s.cli("status", "--wait", str(int(wait * TIMEOUT_SCALE)), timeout=wait + 30)
        assert status.returncode == 0, f"stack not healthy: {status.stderr}\n{s.logs()}"
        yield s
    finally:
        code = s.stop()
        assert code == 0, f"bulwark up exited with {code}\n{s.logs()}"


def apply_policy(stack: Stack, text: str, tmp_path: Path, name: str) -> None:
    """``bulwark apply -f`` a policy given as YAML text."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    res = stack.cli("apply", "-f", str(path))
    assert res.returncode == 0, res.stderr


def alert_total(stack: Stack, **params: str) -> int:
    """How many alerts match ``params`` (the summary endpoint's total)."""
    resp = httpx.get(f"{stack.rest_url}/api/v1/alerts/summary", params={"by": "policy", **params}, timeout=10)
    resp.raise_for_status()
    return int(resp.json()["total"])


def wait_for_alerts(rest_url: str, count: int = 1, timeout: float = 5.0, interval: float = 0.1,
                    **params: object) -> list[dict]:
    """GET /api/v1/alerts with ``params`` until at least ``count`` arrive or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        found = httpx.get(f"{rest_url}/api/v1/alerts", params=params, timeout=5).json()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(interval)
