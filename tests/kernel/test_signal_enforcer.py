"""The eBPF signal enforcer on the real kernel: SIGKILL at the hook, only in selected mount namespaces; an
INET socket a rule blocks is refused at creation instead (EACCES, its cgroup sock_create program) where the
kernel allows it (bpf_set_retval, 5.18+, and a cgroup v2 hierarchy: this host), else killed.

Every enforcer is closed in a finalizer; after close no Bulwark enforcement program stays attached.
Only processes the tests start (inside ``unshare`` shells) can be killed: the kernel programs look at
nothing outside the namespaces in their map.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.reports.kernel import to_raw_event
from services.enforcer.signal.enforcer import SignalEnforcer
from tests.kernel.bpfkit import (
    KILLED,
    cap_rule,
    enforcer_service,
    held_programs,
    inet_blocked,
    inet_refusal_expected,
    net_rule,
    poll_reports,
    signal_programs,
    still_loaded,
)
from tests.kernel.nsutil import host_run, private_copy, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(120)]
REPO = Path(__file__).resolve().parents[2]
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


def _inet_blocked(enf: SignalEnforcer, result: tuple[int, str]) -> bool:
    """An INET socket a rule blocks: refused (EACCES, the process lives) where the enforcer's cgroup program
    is attached, killed where its probe says it could not be."""
    return inet_blocked(result, enf.inet_refusal == "")


def _held_programs(pid: int | None = None) -> set[int]:
    """Ids of the bwenf_ programs ``pid`` (this process by default) holds fds of."""
    return held_programs(lambda line: "bwenf_" in line, pid)


def _reports(enf: SignalEnforcer, n: int, timeout: float = 3) -> list:
    return poll_reports(enf, n, timeout)


def test_protocol_block_only_in_selected_namespace(enforcer, shells) -> None:
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("udp")]), b=(b.mntns, [net_rule("udp", "Audit")])))
    assert (enforcer.inet_refusal == "") == inet_refusal_expected(), enforcer.inet_refusal
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_DGRAM")))
    assert _inet_blocked(enforcer, a.run(sock("AF_INET6", "SOCK_DGRAM", 17)))
    assert a.run(sock("AF_INET", "SOCK_STREAM")) == (0, "alive")          # tcp is not blocked
    assert a.run(sock("AF_UNIX", "SOCK_DGRAM")) == (0, "alive")           # udp means inet only
    assert b.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")           # sibling, same command
    assert host_run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")        # the host
    reports = _reports(enforcer, 2)
    refused = enforcer.inet_refusal == ""
    assert len(reports) == 2 and enforcer.stats()["refused" if refused else "killed"] == 2
    first = reports[0]
    assert first.mntns == a.mntns and first.operation == "Network" and first.ref.match == "udp"
    # the cgroup hook sees the protocol the kernel chose for 0, the tracepoint what socket() was given
    assert first.resource == f"domain=AF_INET type=SOCK_DGRAM protocol={17 if refused else 0}"
    assert first.exe == os.path.realpath(PY) and first.comm and first.refused is refused
    ev = to_raw_event(first, "n1", 0, "boot")
    assert ev.kind == "enforce" and ev.extra["killed"] is not refused and ev.extra["enforcer"] == "eBPF Signal"
    assert ev.extra["operation"] == "Network" and ev.extra["match"] == "udp" and ev.extra["policy"] == "net-udp"
    assert (ev.ret, ev.extra["result"]) == ((-13, "Permission denied") if refused else (0, "Killed (SIGKILL)"))


def test_raw_and_capability(enforcer, shells) -> None:
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("raw")]), b=(b.mntns, [cap_rule("net_raw")])))
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_RAW", 1)))  # raw protocol rule
    expected = {("Network", "raw")}
    if "Capabilities" in enforcer.operations:  # capability:cap_capable exists (5.10 has none: bulwark probe)
        assert b.run(sock("AF_INET", "SOCK_RAW", 1))[0] == KILLED         # CAP_NET_RAW used
        expected.add(("Capabilities", "net_raw"))
    assert b.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")
    assert host_run(sock("AF_INET", "SOCK_RAW", 1)) == (0, "alive")
    kinds = {(r.operation, r.ref.match) for r in _reports(enforcer, len(expected))}
    assert kinds == expected


def test_rules_follow_the_rule_set_and_stopped_workloads_are_ignored(enforcer, shells) -> None:
    a, _ = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("tcp")])))
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_STREAM")))
    enforcer.apply(ruleset(2, a=(a.mntns, [net_rule("udp")])))
    assert a.run(sock("AF_INET", "SOCK_STREAM")) == (0, "alive")
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_DGRAM")))
    stopped = ruleset(3, a=(a.mntns, [net_rule("udp")]))
    stopped.workloads["a"].stopped_ns = 1
    enforcer.apply(stopped)
    assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")


def test_network_allow_list_with_block_posture_blocks_what_it_leaves_out(enforcer, shells) -> None:
    """Issue 15: allowed TCP, blocking network posture: a UDP socket (curl's DNS) is refused (or kills the
    process) in the workload and is reported as DefaultPosture; TCP and a Unix socket live; the sibling is
    untouched."""
    a, b = shells
    rs = ruleset(1, a=(a.mntns, [net_rule("tcp", action="Allow")]), b=(b.mntns, []))
    rs.workloads["a"].network_posture = "block"
    enforcer.apply(rs)
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_DGRAM")))
    assert a.run(sock("AF_INET", "SOCK_STREAM")) == (0, "alive")
    assert a.run(sock("AF_UNIX", "SOCK_DGRAM")) == (0, "alive")
    assert b.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")
    [report] = _reports(enforcer, 1)
    assert to_raw_event(report, "n", 0, "boot").extra["match"] == "udp" and report.ref.policy == "DefaultPosture"
    rs.workloads["a"].network_posture = "audit"
    enforcer.apply(rs)
    assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")


def test_a_protocol_allowed_from_one_program_only(enforcer, shells, tmp_path) -> None:
    """Issue 15 (KubeArmor's github_test_12): under a blocking posture, tcp allowed only from one program:
    its TCP socket lives, the same code run by another program (a copy of the interpreter) is refused (or
    killed) and reported as DefaultPosture; udp, allowed for every program, lives in both. A capability
    blocked from one source kills that source only (where the kernel has the capability:cap_capable
    tracepoint). The sibling namespace is untouched."""
    a, b = shells
    source, other = os.path.realpath(PY), private_copy(os.path.realpath(PY), tmp_path, "other-python")
    rs = ruleset(1, a=(a.mntns, [net_rule("tcp", action="Allow", from_source=[{"path": source}]),
                                 net_rule("udp", action="Allow")]),
                 b=(b.mntns, [cap_rule("net_raw", from_source=[{"path": other}])]))
    rs.workloads["a"].network_posture = "block"
    enforcer.apply(rs)
    assert enforcer.stats()["sources"] == 2 and enforcer.stats()["unsupported_rules"] == 0

    def by(program: str, family: str, kind: str, proto: int = 0) -> str:
        return sock(family, kind, proto).replace(PY, program, 1)

    assert a.run(by(source, "AF_INET", "SOCK_STREAM")) == (0, "alive")
    assert a.run(by(source, "AF_INET6", "SOCK_STREAM", 6)) == (0, "alive")
    assert _inet_blocked(enforcer, a.run(by(other, "AF_INET", "SOCK_STREAM")))
    assert a.run(by(other, "AF_INET", "SOCK_DGRAM")) == (0, "alive")
    assert a.run(by(source, "AF_INET", "SOCK_DGRAM")) == (0, "alive")
    assert b.run(by(other, "AF_INET", "SOCK_STREAM")) == (0, "alive")
    expected = [(a.mntns, other, "Network", "DefaultPosture")]
    if "Capabilities" in enforcer.operations:  # capability:cap_capable exists (bulwark probe says where not)
        assert b.run(by(source, "AF_INET", "SOCK_RAW", 1)) == (0, "alive")   # CAP_NET_RAW, not from `other`
        assert b.run(by(other, "AF_INET", "SOCK_RAW", 1))[0] == KILLED       # CAP_NET_RAW from `other`
        expected.append((b.mntns, other, "Capabilities", "cap-net_raw"))
    reports = _reports(enforcer, len(expected))
    assert [(r.mntns, r.exe, r.operation, r.ref.policy) for r in reports] == expected
    rs.workloads["a"].rules = [net_rule("udp", action="Allow")]  # the source goes: tcp is refused to it too
    enforcer.apply(rs)
    assert _inet_blocked(enforcer, a.run(by(source, "AF_INET", "SOCK_STREAM")))
    assert enforcer.stats()["sources"] == 1


def _caps_any(enf: SignalEnforcer) -> int:
    import ctypes as ct

    return enf._bpf[b"bw_enf_caps_any"][ct.c_int(0)].value


def test_capability_mask_follows_the_rules(enforcer, shells, tmp_path) -> None:
    """Only capabilities some rule names get past the global mask; a rule change moves the mask."""
    _, b = shells
    enforcer.apply(ruleset(1, b=(b.mntns, [cap_rule("net_raw")])))
    assert _caps_any(enforcer) == 1 << 13
    kills = "Capabilities" in enforcer.operations  # capability:cap_capable exists (5.10 has none)
    assert not kills or b.run(sock("AF_INET", "SOCK_RAW", 1))[0] == KILLED
    enforcer.apply(ruleset(2, b=(b.mntns, [cap_rule("mknod"), cap_rule("sys_time")])))
    assert _caps_any(enforcer) == (1 << 27) | (1 << 25)
    assert b.run(sock("AF_INET", "SOCK_RAW", 1)) == (0, "alive")
    assert not kills or b.run(f"mknod {tmp_path}/null c 1 3")[0] == KILLED  # CAP_MKNOD used
    enforcer.apply(ruleset(3, b=(b.mntns, [])))
    assert _caps_any(enforcer) == 0


def test_close_detaches_every_program(btf_tree, shells) -> None:
    a, _ = shells
    enf = SignalEnforcer(btf_tree=btf_tree)
    try:
        enf.apply(ruleset(1, a=(a.mntns, [net_rule("udp")])))
        held = _held_programs()
        assert len(held) == signal_programs()
        assert _inet_blocked(enf, a.run(sock("AF_INET", "SOCK_DGRAM")))
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
            if inet_blocked(a.run(sock("AF_INET", "SOCK_DGRAM")), inet_refusal_expected()):
                held = _held_programs(svc.proc.pid)
                assert len(held) == signal_programs()
                break
            svc.alive()
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the service never enforced the rule")
        ev = await svc.next_event()
        refused = inet_refusal_expected()
        assert ev["kind"] == "enforce" and ev["mntns"] == a.mntns and ev["extra"]["killed"] is not refused
        assert ev["extra"].get("refused", False) is refused
        assert ev["extra"]["enforcer"] == "eBPF Signal" and ev["extra"]["match"] == "udp"
        assert svc.stop(15) == 0
        assert a.run(sock("AF_INET", "SOCK_DGRAM")) == (0, "alive")       # stopped: nothing enforced
        assert still_loaded(held) == set()


def test_protocol_all_blocks_every_socket_in_the_namespace(enforcer, shells) -> None:
    """KubeArmor's ``protocol: all`` (networktests "it can block all network traffic"): ping's ICMP socket,
    tcp and udp are refused (or kill) and even a Unix socket kills the process in the workload (the cgroup
    hook sees INET families only); the sibling and the host live."""
    a, b = shells
    enforcer.apply(ruleset(1, a=(a.mntns, [net_rule("all")]), b=(b.mntns, [])))
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_DGRAM", 1)))   # ping's unprivileged ICMP socket
    assert _inet_blocked(enforcer, a.run(sock("AF_INET", "SOCK_RAW", 1)))     # ping's raw fallback
    assert _inet_blocked(enforcer, a.run(sock("AF_INET6", "SOCK_STREAM")))
    assert a.run(sock("AF_UNIX", "SOCK_SEQPACKET"))[0] == KILLED
    assert b.run(sock("AF_INET", "SOCK_RAW", 1)) == (0, "alive")    # (DGRAM icmp needs ping_group_range)
    assert b.run(sock("AF_UNIX", "SOCK_SEQPACKET")) == (0, "alive")
    assert host_run(sock("AF_UNIX", "SOCK_STREAM")) == (0, "alive")
    reports = _reports(enforcer, 4)
    assert {r.ref.match for r in reports} == {"all"} and {r.mntns for r in reports} == {a.mntns}
