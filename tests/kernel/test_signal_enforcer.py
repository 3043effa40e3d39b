"""The eBPF signal enforcer on the real kernel: SIGKILL at the hook, only in selected mount namespaces.

Every enforcer is closed in a finalizer; after close no Bulwark enforcement program stays attached.
Only processes the tests start (inside ``unshare`` shells) can be killed: the kernel programs look at
nothing outside the namespaces in their map.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.signal import SignalEnforcer
from services.enforcer.sigreport import to_raw_event
from shared.bus import connect, ensure_streams
from shared.codec import pack, unpack_map
from shared.schemas.events import RawBatch
from shared.schemas.rules import Rule
from shared.subjects import raw_events, rules_for_node
from tests.conftest import require_root
from tests.kernel.nsutil import host_run, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]
KILLED = 128 + signal.SIGKILL
PY = sys.executable


def sock(family: str, kind: str, proto: int = 0) -> str:
    return (f"{PY} -c 'import socket; socket.socket(socket.{family}, socket.{kind}, {proto}); "
            "print(\"alive\")'")


def net_rule(protocol: str, action: str = "Block") -> Rule:
    return Rule(policy=f"net-{protocol}", policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="Network", action=action, severity=4, protocol=protocol)


def cap_rule(cap: str) -> Rule:
    return Rule(policy=f"cap-{cap}", policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="Capabilities", action="Block", severity=4, capability=cap)


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


@pytest.fixture(scope="module")
def btf_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("btf") / "bcc-btf"


@pytest.fixture
def enforcer(btf_tree: Path) -> Iterator[SignalEnforcer]:
    enf = SignalEnforcer(btf_tree=btf_tree)
    try:
        yield enf
    finally:
        enf.close()


def _held_programs(pid: int | None = None) -> set[int]:
    """Ids of the bwenf_ programs ``pid`` (this process by default) holds fds of (fdinfo: prog_id)."""
    pid = os.getpid() if pid is None else pid
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return {i for i in ids if "bwenf_" in _show(i)}


def _show(prog_id: int) -> str:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, text=True).stdout


def _loaded(ids: set[int]) -> set[int]:
    """Which of ``ids`` are still loaded in the kernel (a detached, released program is gone)."""
    return {i for i in ids if _show(i).strip()}


def _reports(enf: SignalEnforcer, n: int, timeout: float = 3) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(enf.take_reports())
        time.sleep(0.02)
    return got


def test_protocol_kill_only_in_selected_namespace(enforcer, shells) -> None:
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("udp")]), b=(b.mntns, [net_rule("udp", "Audit")])))
    assert a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED
    assert a.run(sock("AF_INET6", "SOCK_DGRAM", 17))[0] == KILLED
    assert a.run(sock("AF_INET", "SOCK_STREAM")) == (0, "alive")          # tcp is not blocked
    assert a.run(sock("AF_UNIX", "SOCK_DGRAM")) == (0, "alive")           # udp means inet only
    assert b.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")           # sibling, same command
    assert host_run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")        # the host
    reports = _reports(enforcer, 2)
    assert len(reports) == 2 and enforcer.stats()["killed"] == 2
    first = reports[0]
    assert first.mntns == a.mntns and first.operation == "Network" and first.ref.match == "udp"
    assert first.resource == "domain=AF_INET type=SOCK_DGRAM protocol=0"
    assert first.exe == os.path.realpath(PY) and first.comm
    ev = to_raw_event(first, "n1", 0, "boot")
    assert ev.kind == "enforce" and ev.extra["killed"] is True and ev.extra["enforcer"] == "eBPF Signal"
    assert ev.extra["operation"] == "Network" and ev.extra["match"] == "udp" and ev.extra["policy"] == "net-udp"


def test_raw_and_capability(enforcer, shells) -> None:
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("raw")]), b=(b.mntns, [cap_rule("net_raw")])))
    assert a.run(sock("AF_INET", "SOCK_RAW", 1))[0] == KILLED             # raw protocol rule
    assert b.run(sock("AF_INET", "SOCK_RAW", 1))[0] == KILLED             # CAP_NET_RAW used
    assert b.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")
    assert host_run(sock("AF_INET", "SOCK_RAW", 1)) == (0, "alive")
    kinds = {(r.operation, r.ref.match) for r in _reports(enforcer, 2)}
    assert kinds == {("Network", "raw"), ("Capabilities", "net_raw")}


def test_rules_follow_the_rule_set_and_stopped_workloads_are_ignored(enforcer, shells) -> None:
    a, _ = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("tcp")])))
    assert a.run(sock("AF_INET", "SOCK_STREAM"))[0] == KILLED
    enforcer.apply(ruleset(2, a=(a.mntns, [net_rule("udp")])))
    assert a.run(sock("AF_INET", "SOCK_STREAM")) == (0, "alive")
    assert a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED
    stopped = ruleset(3, a=(a.mntns, [net_rule("udp")]))
    stopped.workloads["a"].stopped_ns = 1
    enforcer.apply(stopped)
    assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")


def _caps_any(enf: SignalEnforcer) -> int:
    import ctypes as ct

    return enf._bpf[b"bw_enf_caps_any"][ct.c_int(0)].value


def test_capability_mask_follows_the_rules(enforcer, shells, tmp_path) -> None:
    """Only capabilities some rule names get past the global mask; a rule change moves the mask."""
    _, b = shells
    enforcer.apply(ruleset(1, b=(b.mntns, [cap_rule("net_raw")])))
    assert _caps_any(enforcer) == 1 << 13
    assert b.run(sock("AF_INET", "SOCK_RAW", 1))[0] == KILLED
    enforcer.apply(ruleset(2, b=(b.mntns, [cap_rule("mknod"), cap_rule("sys_time")])))
    assert _caps_any(enforcer) == (1 << 27) | (1 << 25)
    assert b.run(sock("AF_INET", "SOCK_RAW", 1)) == (0, "alive")
    assert b.run(f"mknod {tmp_path}/null c 1 3")[0] == KILLED             # CAP_MKNOD used
    enforcer.apply(ruleset(3, b=(b.mntns, [])))
    assert _caps_any(enforcer) == 0


def test_close_detaches_every_program(btf_tree, shells) -> None:
    a, _ = shells
    enf = SignalEnforcer(btf_tree=btf_tree)
    try:
        enf.apply(ruleset(1, a=(a.mntns, [net_rule("udp")])))
        held = _held_programs()
        assert len(held) == 2
        assert a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED
    finally:
        enf.close()
    assert _held_programs() == set() and _loaded(held) == set()
    assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")
    enf.close()  # idempotent
    with pytest.raises(RuntimeError):
        enf.apply(ruleset(2, a=(a.mntns, [])))


def test_nothing_loaded_without_rules(enforcer, shells) -> None:
    a, _ = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [])))
    assert _held_programs() == set()


async def test_service_publishes_kill_events(nats_server, shells, tmp_path, btf_tree) -> None:
    """The whole service: the kill is reported on the node's raw subject as an ``enforce`` event."""
    a, _ = shells
    node = "sig-node"
    nc = await connect(nats_server.url, "test")
    proc = None
    got: asyncio.Queue = asyncio.Queue()
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        async def on_raw(msg) -> None:
            got.put_nowait(msg.data)

        await nc.subscribe(raw_events(node), cb=on_raw)
        await js.publish(rules_for_node(node), pack(ruleset(1, a=(a.mntns, [net_rule("udp")])).to_wire()))
        env = {**os.environ, "BULWARK_NATS_URL": nats_server.url, "BULWARK_NODE_NAME": node,
               "BULWARK_DATA_DIR": str(tmp_path), "BULWARK_BTF_TREE_DIR": str(btf_tree),
               "BULWARK_HEARTBEAT_SECONDS": "0.2"}
        log = open(tmp_path / "enforcer.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "services.enforcer"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # the service compiles its programs first (slow on a busy host)
        while time.monotonic() < deadline:  # until the service has loaded the rules
            if a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED:
                held = _held_programs(proc.pid)
                assert len(held) == 2
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the service never enforced the rule")
        batch = RawBatch.from_wire(unpack_map(await asyncio.wait_for(got.get(), 10), ("node", "events")))
        ev = batch.events[0]
        assert ev["kind"] == "enforce" and ev["mntns"] == a.mntns and ev["extra"]["killed"] is True
        assert ev["extra"]["enforcer"] == "eBPF Signal" and ev["extra"]["match"] == "udp"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")       # stopped: nothing enforced
        assert _loaded(held) == set()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        await nc.close()
