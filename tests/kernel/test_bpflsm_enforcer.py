"""The BPF-LSM enforcer on a kernel that runs BPF-LSM (kernel-lab guests): refused inline, only in the
selected mount namespace; neighbours (another mount namespace) and the host are untouched.

Every enforcer is closed in a finalizer; after close no Bulwark LSM program stays attached. The
programs look at nothing outside the namespaces in their map, and the tests only select the
namespaces of ``unshare`` shells they started.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.enforcer.bpflsm import BpfLsmEnforcer
from services.enforcer.bpflsm.enforcer import HOOKS
from services.enforcer.reports.kernel import to_raw_event
from services.enforcer.select import REGISTRY, choose
from shared.schemas.rules import Rule, RuleSet
from tests.kernel.bpfkit import (
    bpftool_show,
    cap_rule,
    enforcer_service,
    held_programs,
    net_rule,
    poll_reports,
    still_loaded,
)
from tests.kernel.nsutil import block_exec, file_rule, host_run, private_copy, ruleset

# bcc under TCG: minutes
pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.bpflsm,
              pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
EPERM_RC = 126  # sh: a refused exec
CAT = "/usr/bin/cat"
SLOW = 180  # s: a Python start under emulation on a busy host


def sock(family: str, kind: str, proto: int = 0) -> str:
    return (f"{PY} -c 'import socket; socket.socket(socket.{family}, socket.{kind}, {proto}); "
            "print(\"alive\")' 2>&1 | tail -1")


@pytest.fixture(scope="module")
def loaded(btf_tree: Path) -> Iterator[BpfLsmEnforcer]:
    """One enforcer for the module (compiling the programs is slow under emulation), closed at the end."""
    enf = BpfLsmEnforcer(btf_tree=btf_tree)
    try:
        yield enf
    finally:
        enf.close()


@pytest.fixture
def lsm(loaded: BpfLsmEnforcer) -> Iterator[BpfLsmEnforcer]:
    """The module's enforcer, with no rules and no reports left after each test."""
    loaded.take_reports()
    try:
        yield loaded
    finally:
        loaded.apply(ruleset(0))
        time.sleep(0.1)
        loaded.take_reports()


@pytest.fixture
def copy(tmp_path: Path) -> str:
    return private_copy("/usr/bin/true", tmp_path, "bwtrue")


def _held_programs(pid: int | None = None) -> set[int]:
    """Ids of the BPF-LSM programs whose fds (program or link) ``pid`` holds."""
    return held_programs(lambda line: line.split()[1:2] == ["lsm"], pid)


def _all_held() -> list[str]:
    """Every BPF program this process holds, as bpftool shows it (for failure messages)."""
    return [bpftool_show(i).splitlines()[0] for i in sorted(held_programs(lambda line: bool(line.strip())))]


def _reports(enf: BpfLsmEnforcer, n: int, timeout: float = 5) -> list:
    return poll_reports(enf, n, timeout)


def _with_posture(rs: RuleSet, wid: str, **postures: str) -> RuleSet:
    for kind, value in postures.items():
        setattr(rs.workloads[wid], f"{kind}_posture", value)
    return rs


def test_probe_says_why_and_bpflsm_is_chosen_first(loaded) -> None:
    ok, why = loaded.probe()
    assert ok, why
    assert "bprm_check_security" in why
    assert len(_held_programs()) == len(HOOKS), _all_held()
    # the same enforcer object (compiling is slow under emulation); test_service_* chooses for real
    chosen = choose("bpflsm,fanotify,audit", {**REGISTRY, "bpflsm": lambda: loaded})
    assert chosen is loaded and chosen.operations == frozenset({"Process", "File", "Network", "Capabilities",
                                                                "Preset:filelessExec", "Preset:protectEnv",
                                                                "Preset:anonMapExec"})


def test_exec_refused_only_in_the_selected_namespace(lsm, shells, copy) -> None:
    a, b = shells
    lsm.apply(ruleset(1, a=(a.mntns, [block_exec(copy)]), b=(b.mntns, [])))
    before = lsm.stats()["refused"]
    rc, out = a.run(copy)
    assert rc == EPERM_RC and "Operation not permitted" in out
    assert a.run("/usr/bin/true") == (0, "")           # another file
    assert b.run(copy) == (0, "")                      # the neighbour
    assert host_run(copy) == (0, "")                   # the host
    [rep] = _reports(lsm, 1)
    assert rep.refused and rep.operation == "Process" and rep.path == copy and rep.access == "exec"
    assert rep.head.mntns == a.mntns and rep.head.ref.policy == "block-exec"
    ev = to_raw_event(rep, "n1", 0, "boot")
    assert ev.kind == "enforce" and ev.ret == -1 and ev.path == copy
    assert ev.extra["enforcer"] == "BPFLSM" and ev.extra["refused"] is True and ev.extra["killed"] is False
    assert ev.extra["operation"] == "Process" and ev.extra["match"] == copy
    assert lsm.stats()["refused"] == before + 1


def test_read_only_file_and_directories(lsm, shells, tmp_path) -> None:
    a, b = shells
    ro, deep = tmp_path / "ro.txt", tmp_path / "d" / "sub"
    deep.mkdir(parents=True)
    ro.write_text("secret\n")
    (tmp_path / "d" / "top").write_text("top\n")
    (deep / "low").write_text("low\n")
    lsm.apply(ruleset(1, a=(a.mntns, [file_rule(path=str(ro), read_only=True),
                                      file_rule(dir=f"{tmp_path}/d/", policy="dir-pol")])))
    assert a.run(f"cat {ro}") == (0, "secret")                             # a read keeps readOnly
    rc, out = a.run(f"echo x >> {ro}")
    assert rc != 0 and "Operation not permitted" in out                   # a write breaks it
    rc, out = a.run(f"cat {tmp_path}/d/top")
    assert rc != 0 and "Operation not permitted" in out                   # directly in the directory
    assert a.run(f"cat {deep}/low") == (0, "low")                         # not recursive: deeper is fine
    assert b.run(f"echo y >> {ro}")[0] == 0 and host_run(f"echo z >> {ro}")[0] == 0
    assert ro.read_text() == "secret\ny\nz\n"
    lsm.apply(ruleset(2, a=(a.mntns, [file_rule(dir=f"{tmp_path}/d/", recursive=True)])))
    assert a.run(f"cat {deep}/low")[0] != 0                               # recursive now
    assert a.run(f"cat {ro}") == (0, "secret\ny\nz")
    kinds = {(r.operation, r.access, r.path) for r in _reports(lsm, 3)}
    assert ("File", "write", str(ro)) in kinds and ("File", "read", f"{deep}/low") in kinds


def test_owner_only(lsm, shells, tmp_path) -> None:
    a, _ = shells
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.write_text("m\n")
    theirs.write_text("t\n")
    os.chown(theirs, 4242, 4242)
    os.chmod(tmp_path, 0o755)
    lsm.apply(ruleset(1, a=(a.mntns, [file_rule(dir=f"{tmp_path}/", owner_only=True)])))
    assert a.run(f"cat {mine}") == (0, "m")                               # root owns it
    assert a.run(f"cat {theirs}")[0] != 0                                 # not the owner


def test_raw_socket_and_capability_refused(lsm, shells, tmp_path) -> None:
    a, b = shells
    lsm.apply(ruleset(1, a=(a.mntns, [net_rule("raw")]), b=(b.mntns, [cap_rule("mknod")])))
    assert "PermissionError" in a.run(sock("AF_INET", "SOCK_RAW", 255), SLOW)[1]   # IPPROTO_RAW: "raw"
    assert a.run(sock("AF_INET", "SOCK_DGRAM"), SLOW)[1] == "alive"
    assert b.run(sock("AF_INET", "SOCK_RAW", 255), SLOW)[1] == "alive"
    rc, out = b.run(f"mknod {tmp_path}/null c 1 3")
    assert rc != 0 and "Operation not permitted" in out                   # CAP_MKNOD refused
    assert a.run(f"mknod {tmp_path}/null2 c 1 3")[0] == 0                 # the neighbour may
    assert host_run(sock("AF_INET", "SOCK_RAW", 255), SLOW)[1] == "alive"
    kinds = {(r.operation, r.match, r.refused) for r in _reports(lsm, 2)}
    assert kinds == {("Network", "raw", True), ("Capabilities", "mknod", True)}


def test_allow_lists_and_default_postures(lsm, shells, copy) -> None:
    a, b = shells
    allow_usr = Rule(policy="allow-usr", policy_kind="KubeArmorPolicy", policy_namespace="default",
                     operation="Process", action="Allow", dir="/usr/", recursive=True)
    rs = ruleset(1, a=(a.mntns, [allow_usr, net_rule("tcp", "Allow")]), b=(b.mntns, [net_rule("tcp", "Allow")]))
    lsm.apply(_with_posture(_with_posture(rs, "a", file="block", network="block"), "b", network="audit"))
    assert a.run("/usr/bin/true") == (0, "")                              # on the allow-list
    assert a.run(copy)[0] == EPERM_RC                                     # file posture: block
    assert a.run(sock("AF_INET", "SOCK_STREAM"), SLOW)[1] == "alive"
    assert "PermissionError" in a.run(sock("AF_INET", "SOCK_DGRAM"), SLOW)[1]   # network posture: block
    assert b.run(sock("AF_INET", "SOCK_DGRAM"), SLOW)[1] == "alive"             # audit posture: reported
    reps = _reports(lsm, 3)
    assert {(r.operation, r.refused, r.head.ref.policy) for r in reps} == {
        ("Process", True, "DefaultPosture"), ("Network", True, "DefaultPosture"),
        ("Network", False, "DefaultPosture")}


def test_from_source(lsm, shells, tmp_path) -> None:
    a, _ = shells
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    block_from_cat = file_rule(path=str(secret), from_source=[{"path": CAT}])
    lsm.apply(ruleset(1, a=(a.mntns, [block_from_cat])))
    assert a.run(f"cat {secret}")[0] != 0                                 # cat may not
    assert a.run(f"head {secret}") == (0, "s")                            # head may
    everyone = file_rule(dir=f"{tmp_path}/", policy="no-one")
    only_cat = file_rule("Allow", policy="cat-may", dir=f"{tmp_path}/", from_source=[{"path": CAT}])
    lsm.apply(ruleset(2, a=(a.mntns, [everyone, only_cat])))
    assert a.run(f"cat {secret}") == (0, "s")                             # a sourced Allow beats Block
    assert a.run(f"head {secret}")[0] != 0


def test_audit_is_reported_not_refused(lsm, shells, copy) -> None:
    a, b = shells
    rs = ruleset(1, a=(a.mntns, [block_exec(copy, action="Audit")]), b=(b.mntns, [block_exec(copy)]))
    rs.workloads["b"].audited = True
    rs.workloads["b"].rules[0].action = "Audit (Block)"                  # as the compiler does
    lsm.apply(rs)
    assert a.run(copy) == (0, "") and b.run(copy) == (0, "")
    reps = _reports(lsm, 2)
    assert len(reps) == 2 and not any(r.refused for r in reps)
    assert {to_raw_event(r, "n", 0, "b").extra["result"] for r in reps} == {"Passed"}


def test_rules_change_at_run_time_without_reloading(lsm, shells, copy, tmp_path) -> None:
    a, _ = shells
    other = private_copy("/usr/bin/true", tmp_path, "bwother")
    lsm.apply(ruleset(1, a=(a.mntns, [block_exec(copy)])))
    held = _held_programs()
    assert len(held) == len(HOOKS)
    assert a.run(copy)[0] == EPERM_RC and a.run(other) == (0, "")
    lsm.apply(ruleset(2, a=(a.mntns, [block_exec(other)])))
    assert a.run(copy) == (0, "") and a.run(other)[0] == EPERM_RC
    stopped = ruleset(3, a=(a.mntns, [block_exec(other)]))
    stopped.workloads["a"].stopped_ns = 1
    lsm.apply(stopped)
    assert a.run(other) == (0, "")
    assert _held_programs() == held                                       # the same programs throughout


async def test_service_refuses_and_publishes(nats_server, shells, tmp_path, btf_tree, copy) -> None:
    """The whole service chooses BPF-LSM first, refuses, and publishes the refusal as an ``enforce`` event."""
    a, _ = shells
    async with enforcer_service(nats_server.url, "lsm-node", ruleset(1, a=(a.mntns, [block_exec(copy)])),
                                tmp_path, btf_tree, BULWARK_ENFORCER_ORDER="bpflsm,fanotify,audit") as svc:
        deadline = time.monotonic() + 800  # the service compiles the programs (minutes under TCG)
        while time.monotonic() < deadline:  # until the service has loaded the rules
            if a.run(copy)[0] == EPERM_RC:
                held = _held_programs(svc.proc.pid)
                assert len(held) == len(HOOKS)
                break
            svc.alive()
            await asyncio.sleep(0.5)
        else:
            pytest.fail("the service never enforced the rule")
        ev = await svc.next_event()
        assert ev["kind"] == "enforce" and ev["mntns"] == a.mntns and ev["extra"]["refused"] is True
        assert ev["extra"]["enforcer"] == "BPFLSM" and ev["path"] == copy and ev["ret"] == -1
        assert svc.stop(30) == 0
        assert a.run(copy) == (0, "")                                     # stopped: nothing enforced
        assert still_loaded(held) == set()


def test_close_detaches_every_program(loaded, shells, copy) -> None:
    """Last: closes the module's enforcer."""
    a, _ = shells
    loaded.apply(ruleset(1, a=(a.mntns, [block_exec(copy)])))
    held = _held_programs()
    assert len(held) == len(HOOKS) and a.run(copy)[0] == EPERM_RC
    loaded.close()
    assert _held_programs() == set() and still_loaded(held) == set()
    assert a.run(copy) == (0, "")
    loaded.close()
    with pytest.raises(RuntimeError):
        loaded.apply(ruleset(2, a=(a.mntns, [])))
