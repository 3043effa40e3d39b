"""The eBPF signal enforcer on the real kernel: SIGKILL at the hook, only in selected mount namespaces.

Every enforcer is closed in a finalizer; after close no Bulwark enforcement program stays attached.
Only processes the tests start (inside ``unshare`` shells) can be killed: the kernel programs look at
nothing outside the namespaces in their map.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.reports.kernel import to_raw_event
from services.enforcer.signal.enforcer import SignalEnforcer
from tests.kernel.bpfkit import (
    cap_rule,
    enforcer_service,
    held_programs,
    net_rule,
    poll_reports,
    signal_programs,
    still_loaded,
)
from tests.kernel.nsutil import host_run, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]
KILLED = 128 + signal.SIGKILL
PY = sys.executable


def sock(family: str, kind: str, proto: int = 0) -> str:
    return (f"{PY} -c 'import socket; socket.socket(socket.{family}, socket.{kind}, {proto}); "
            "print(\"alive\")'")


@pytest.fixture
def enforcer(btf_tree: Path) -> Iterator[SignalEnforcer]:
    enf = SignalEnforcer(btf_tree=btf_tree)
    try:
        yield enf
    finally:
        enf.close()


def _held_programs(pid: int | None = None) -> set[int]:
    """Ids of the bwenf_ programs ``pid`` (this process by default) holds fds of."""
    return held_programs(lambda line: "bwenf_" in line, pid)


def _reports(enf: SignalEnforcer, n: int, timeout: float = 3) -> list:
    return poll_reports(enf, n, timeout)


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


def test_network_allow_list_with_block_posture_kills_what_it_leaves_out(enforcer, shells) -> None:
    """Issue 15: allowed TCP, blocking network posture: a UDP socket (curl's DNS) kills the process in the
    workload and is reported as DefaultPosture; TCP and a Unix socket live; the sibling is untouched."""
    a, b = shells
    rs = ruleset(1, a=(a.mntns, [net_rule("tcp", action="Allow")]), b=(b.mntns, []))
    rs.workloads["a"].network_posture = "block"
    enforcer.apply(rs)
    assert a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED
    assert a.run(sock("AF_INET", "SOCK_STREAM")) == (0, "alive")
    assert a.run(sock("AF_UNIX", "SOCK_DGRAM")) == (0, "alive")
    assert b.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")
    [report] = _reports(enforcer, 1)
    assert to_raw_event(report, "n", 0, "boot").extra["match"] == "udp" and report.ref.policy == "DefaultPosture"
    rs.workloads["a"].network_posture = "audit"
    enforcer.apply(rs)
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
        assert len(held) == signal_programs()
        assert a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED
    finally:
        enf.close()
    assert _held_programs() == set() and still_loaded(held) == set()
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
    async with enforcer_service(nats_server.url, "sig-node", ruleset(1, a=(a.mntns, [net_rule("udp")])),
                                tmp_path, btf_tree) as svc:
        deadline = time.monotonic() + 120  # the service compiles its programs first (slow on a busy host)
        while time.monotonic() < deadline:  # until the service has loaded the rules
            if a.run(sock("AF_INET", "SOCK_DGRAM"))[0] == KILLED:
                held = _held_programs(svc.proc.pid)
                assert len(held) == signal_programs()
                break
            svc.alive()
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the service never enforced the rule")
        ev = await svc.next_event()
        assert ev["kind"] == "enforce" and ev["mntns"] == a.mntns and ev["extra"]["killed"] is True
        assert ev["extra"]["enforcer"] == "eBPF Signal" and ev["extra"]["match"] == "udp"
        assert svc.stop(15) == 0
        assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")       # stopped: nothing enforced
        assert still_loaded(held) == set()


def test_protocol_all_kills_every_socket_in_the_namespace(enforcer, shells) -> None:
    """KubeArmor's ``protocol: all`` (networktests "it can block all network traffic"): ping's ICMP socket,
    tcp, udp and even a Unix socket kill the process in the workload; the sibling and the host live."""
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("all")]), b=(b.mntns, [])))
    assert a.run(sock("AF_INET", "SOCK_DGRAM", 1))[0] == KILLED          # ping's unprivileged ICMP socket
    assert a.run(sock("AF_INET", "SOCK_RAW", 1))[0] == KILLED            # ping's raw fallback
    assert a.run(sock("AF_INET6", "SOCK_STREAM"))[0] == KILLED
    assert a.run(sock("AF_UNIX", "SOCK_SEQPACKET"))[0] == KILLED
    assert b.run(sock("AF_INET", "SOCK_RAW", 1)) == (0, "alive")    # (DGRAM icmp needs ping_group_range)
    assert b.run(sock("AF_UNIX", "SOCK_SEQPACKET")) == (0, "alive")
    assert host_run(sock("AF_UNIX", "SOCK_STREAM")) == (0, "alive")
    reports = _reports(enforcer, 4)
    assert {r.ref.match for r in reports} == {"all"} and {r.mntns for r in reports} == {a.mntns}
