"""What the BPF enforcer tests share: the programs a process holds (as bpftool sees them), the rules
they block, report polling, and the enforcer service run against a real nats-server."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from shared.codec import pack, unpack_map
from shared.nats.bus import connect, ensure_streams
from shared.nats.subjects import raw_events, rules_for_node
from shared.schemas.events import RawBatch
from shared.schemas.rules import Rule, RuleSet

__all__ = ["REPO", "PY", "bpftool_show", "held_programs", "still_loaded", "net_rule", "cap_rule",
           "poll_reports", "EnforcerService", "enforcer_service", "signal_programs", "preset_rule",
           "KILLED", "EACCES_TEXT", "inet_refusal_expected", "inet_blocked"]

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds (from its fds' fdinfo); empty when it is gone."""
    ids: set[int] = set()
    try:
        fdinfos = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return ids
    for fdinfo in fdinfos:
        try:
            text = fdinfo.read_text()
        except OSError:
            continue
        ids.update(int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:"))
    return ids


def bpftool_show(prog_id: int) -> str:
    """``bpftool prog show id N`` ("" once the program is gone)."""
    return subprocess.run([BPFTOOL, "prog", "show", "id", str(prog_id)], capture_output=True, text=True).stdout


def held_programs(keep: Callable[[str], bool], pid: int | None = None) -> set[int]:
    """Ids of the BPF programs whose fds (program or link) ``pid`` (this process by default) holds and
    whose bpftool line ``keep`` accepts."""
    pid = os.getpid() if pid is None else pid
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    return {i for i in ids if keep(bpftool_show(i))}


def still_loaded(ids: set[int]) -> set[int]:
    """Which of ``ids`` the kernel still has (a detached, released program is gone)."""
    return {i for i in ids if bpftool_show(i).strip()}


def net_rule(protocol: str, action: str = "Block", **kw: Any) -> Rule:
    return Rule(policy=f"net-{protocol}", policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="Network", action=action, severity=4, protocol=protocol, **kw)


def cap_rule(cap: str, action: str = "Block", **kw: Any) -> Rule:
    return Rule(policy=f"cap-{cap}", policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="Capabilities", action=action, severity=4, capability=cap, **kw)


def preset_rule(preset: str, action: str = "Block") -> Rule:
    return Rule(policy=f"preset-{preset}", policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="Preset", action=action, severity=8, preset=preset)


KILLED = 128 + signal.SIGKILL   # a shell's status for a command killed by SIGKILL
EACCES_TEXT = "PermissionError: [Errno 13] Permission denied"


@functools.cache  # the kernel's BTF is parsed once per test run: the answer cannot change within it
def inet_refusal_expected() -> bool:
    """Whether the signal enforcer can refuse INET sockets here (its cgroup sock_create program needs
    bpf_set_retval, 5.18+, and a mounted cgroup v2 hierarchy), rather than kill at socket()."""
    from services.enforcer.signal.cgroup_link import cgroup2_root
    from shared.bpf.btf import Btf

    return "BPF_FUNC_set_retval" in Btf.load().enumerators("bpf_func_id") and cgroup2_root()[0] is not None


def inet_blocked(result: tuple[int, str], refused: bool) -> bool:
    """A Python ``socket.socket(...)`` run that a Network rule blocked: refused (EACCES, the process lives to
    print the error) when ``refused``, else killed by SIGKILL."""
    rc, out = result
    return (rc == 1 and EACCES_TEXT in out) if refused else rc == KILLED


def signal_programs() -> int:
    """How many programs the signal enforcer loads on this kernel (one serves both mprotects; plus the
    cgroup socket program where it refuses INET sockets)."""
    from services.enforcer.signal.enforcer import attachments_here

    return len({fn for _tp, fn in attachments_here()}) + inet_refusal_expected()


def poll_reports(enforcer: Any, n: int, timeout: float = 5) -> list[Any]:
    """``enforcer.take_reports()`` until ``n`` came or ``timeout`` passed."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(enforcer.take_reports())
        time.sleep(0.02)
    return got


class EnforcerService:
    """A running ``python -m services.enforcer`` and the raw batches it publishes."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, raw: asyncio.Queue[bytes]) -> None:
        self.proc, self.log, self.raw = proc, log, raw

    def alive(self) -> None:
        """Assert the service still runs (its log tail otherwise)."""
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        """The first event of the next raw batch it publishes."""
        data = await asyncio.wait_for(self.raw.get(), timeout)
        event: dict[str, Any] = RawBatch.from_wire(unpack_map(data, ("node", "events"))).events[0]
        return event

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: its exit status."""
        self.proc.terminate()
        return self.proc.wait(timeout)


@contextlib.asynccontextmanager
async def enforcer_service(nats_url: str, node: str, rules: RuleSet, data_dir: Path, btf_tree: Path,
                           **env: str) -> AsyncIterator[EnforcerService]:
    """The enforcer service for ``node`` with ``rules`` already on the stream; killed if still running."""
    nc = await connect(nats_url, "test")
    raw: asyncio.Queue[bytes] = asyncio.Queue()
    proc: subprocess.Popen[bytes] | None = None
    try:
        js = nc.jetstream()
        await ensure_streams(js)

        async def on_raw(msg: Any) -> None:
            raw.put_nowait(msg.data)

        await nc.subscribe(raw_events(node), cb=on_raw)
        await js.publish(rules_for_node(node), pack(rules.to_wire()))
        full_env = {**os.environ, "BULWARK_NATS_URL": nats_url, "BULWARK_NODE_NAME": node,
                    "BULWARK_DATA_DIR": str(data_dir), "BULWARK_BTF_TREE_DIR": str(btf_tree),
                    "BULWARK_HEARTBEAT_SECONDS": "0.2", **env}
        log = data_dir / "enforcer.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([PY, "-m", "services.enforcer"], cwd=REPO, env=full_env, stdout=out,
                                    stderr=subprocess.STDOUT)
        yield EnforcerService(proc, log, raw)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        await nc.close()
