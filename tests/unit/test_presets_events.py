"""Preset records and reports from their bytes to the alert: the monitor's decoder (BW_OP_PRESET), the
enforcers' reports (BW_OP_ENF_PRESET), what the feeder asks the matcher and the alert's fields
(Operation, Action, Result, Enforcer, as the kernel really acted)."""
from __future__ import annotations

import ctypes

import pytest

from services.enforcer.composite import restrict
from services.enforcer.presets import claimed_presets, compile_presets
from services.enforcer.reports.presets import is_preset_record, parse_preset_record
from services.enforcer.signal.rules import RuleRef
from services.feeder.enrich import build_alert
from services.feeder.kinds import access_for
from services.monitor.decode.records import RecordDecoder
from shared.bpf import abi
from shared.errors import DecodeError
from shared.matcher import decide
from shared.presets import route_of
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules
from tests.unit.test_monitor_records import CTX, proc_rec, sys_rec

WL = Workload(id="c" * 64, name="wl", namespace="presets", kind="container", node="n1", mntns=4026532000,
              pidns=4026532001, labels={"app": "fileless"})


def _rule(preset: str, action: str = "Block", policy: str = "pre") -> Rule:
    return Rule(policy=policy, policy_kind="KubeArmorPolicy", policy_namespace="presets", operation="Preset",
                action=action, severity=8, message="no fileless", tags=["T1620"], preset=preset)


def _preset_rec(args: tuple[int, ...], nr: int, ret: int = 0, name: str = "", aux: bytes = b"",
                dir_: list[str] | None = None, flags: int = 0) -> bytes:
    if dir_ is not None:
        flags |= abi.BW_SYS_F_DIR_FD
    if aux:
        flags |= abi.BW_SYS_F_AUX_STR
    return sys_rec(abi.BW_OP_PRESET, nr, args, ret=ret, flags=flags, name=name, aux=aux, dir_=dir_)


def test_monitor_preset_records_decode_per_preset() -> None:
    dec = RecordDecoder(CTX)
    dec.feed(proc_rec(100, ["usr", "bin", "python3.11"]))
    memfd = dec.feed(_preset_rec((abi.BW_PRESET_FILELESS_EXEC, abi.BW_PRE_MEMFD, 0, 0, 0, 0), 59,
                                 name="memfd:payload", aux=b"/proc/self/fd/3\0", dir_=[],
                                 flags=abi.BW_SYS_F_DYING))
    assert (memfd["kind"], memfd["path"], memfd["exe"], memfd["syscall"], memfd["ret"]) == (
        "preset", "memfd:payload", "/memfd:payload (deleted)", "execve", 0)
    assert memfd["extra"] == {"preset": "filelessExec", "memfd": True, "filename": "/proc/self/fd/3", "dying": True}
    deleted = dec.feed(_preset_rec((abi.BW_PRESET_FILELESS_EXEC, 0, 0, 0, 0, 0), 322, name="x",
                                   dir_=["tmp", "x"]))
    assert (deleted["path"], deleted["extra"]["memfd"]) == ("/tmp/x", False)
    env = dec.feed(_preset_rec((abi.BW_PRESET_PROTECT_ENV, 0, 4242, 3, 0, 0), 257, ret=3,
                               dir_=["proc", "7", "environ"]))
    assert (env["path"], env["syscall"], env["extra"]) == (
        "/proc/7/environ", "openat", {"preset": "protectEnv", "target_pid": 4242, "fd": 3})
    mmap = dec.feed(_preset_rec((abi.BW_PRESET_ANON_MAP_EXEC, 0, 7, 0x22, 0, 4096), 9, ret=0x7F0000001000))
    assert (mmap["path"], mmap["syscall"]) == ("", "mmap")
    assert mmap["extra"] == {"preset": "anonMapExec", "prot": "PROT_READ|PROT_WRITE|PROT_EXEC",
                             "map_flags": "MAP_PRIVATE|MAP_ANONYMOUS", "addr": "0x7f0000001000", "len": 4096}
    mprot = dec.feed(_preset_rec((abi.BW_PRESET_ANON_MAP_EXEC, abi.BW_PRE_MPROTECT, 5, 0, 0x7F00, 8192), 10))
    assert (mprot["syscall"], mprot["extra"]["addr"], "map_flags" in mprot["extra"]) == ("mprotect", "0x7f00", False)
    entered = dec.feed(_preset_rec((abi.BW_PRESET_EXEC, 0, 999, 0, 0, 0), 59, name="/bin/ls", aux=b"nsenter\0",
                                   dir_=["usr", "bin", "ls"]))
    assert (entered["path"], entered["extra"]) == (
        "/usr/bin/ls", {"preset": "exec", "filename": "/bin/ls", "parent_pid": 999, "parent_comm": "nsenter"})
    assert RawEvent.from_wire(entered).kind == "preset"


def test_a_preset_record_of_an_unknown_preset_or_overrun_is_an_error() -> None:
    dec = RecordDecoder(CTX)
    with pytest.raises(DecodeError, match="unknown preset 9"):
        dec.feed(_preset_rec((9, 0, 0, 0, 0, 0), 59))
    short = bytearray(_preset_rec((abi.BW_PRESET_EXEC, 0, 0, 0, 0, 0), 59, dir_=["x"]))
    short[4:8] = (len(short) - 1).to_bytes(4, "little")          # a path promised, the record cut short
    with pytest.raises(DecodeError, match="with a path"):
        dec.feed(bytes(short[:-1]))


def _event(extra: dict, kind: str = "preset", path: str = "memfd:payload", ret: int = 0) -> RawEvent:
    return RawEvent(kind=kind, ts_ns=1_700_000_000_000_000_000, node="n1", pid=10, tid=10, ppid=9, ns_pid=2,
                    ns_ppid=1, uid=0, gid=0, mntns=WL.mntns, pidns=WL.pidns, cgroup_id=1, comm="payload",
                    exe="/memfd:payload (deleted)", path=path, ret=ret, syscall="execve", extra=extra)


def _alert(ev: RawEvent, rules: list[Rule]) -> dict:
    access = access_for(ev)
    assert access is not None and access.operation == "Preset"
    decision = decide(rules, access)
    assert decision is not None and decision.rule is not None
    return build_alert(ev, WL, decision, cluster="c", enforcer_name="Fanotify",
                       operation=decision.rule.operation)   # as ingest passes it


def test_audit_alert_has_the_presets_operation_and_passed() -> None:
    alert = _alert(_event({"preset": "filelessExec", "memfd": True, "filename": "/proc/self/fd/3"}),
                   [_rule("filelessExec", "Audit")])
    assert (alert["PolicyName"], alert["Severity"], alert["Message"], alert["Tags"]) == (
        "pre", "8", "no fileless", "T1620")
    assert (alert["Operation"], alert["Resource"], alert["Action"], alert["Result"], alert["Enforcer"]) == (
        "Process", "memfd:payload", "Audit", "Passed", "eBPF Monitor")
    assert alert["ProcessName"] == "memfd:payload"
    assert "preset=filelessExec" in alert["Data"] and "filename=/proc/self/fd/3" in alert["Data"]


def test_a_block_nothing_enforced_is_audit_block() -> None:
    alert = _alert(_event({"preset": "protectEnv", "target_pid": 7}, path="/proc/7/environ"),
                   [_rule("protectEnv")])
    assert (alert["Operation"], alert["Action"], alert["Result"], alert["Enforcer"]) == (
        "File", "Audit (Block)", "Passed", "eBPF Monitor")


def test_kill_and_refusal_reports_are_block_with_what_the_kernel_did() -> None:
    killed = _event({"operation": "Preset", "preset": "filelessExec", "match": "filelessExec", "killed": True,
                     "enforcer": "eBPF Signal", "result": "Killed (SIGKILL)"}, kind="enforce")
    alert = _alert(killed, [_rule("filelessExec")])
    assert (alert["Operation"], alert["Action"], alert["Result"], alert["Enforcer"]) == (
        "Process", "Block", "Killed (SIGKILL)", "eBPF Signal")
    refused = _event({"operation": "Preset", "preset": "anonMapExec", "match": "anonMapExec", "killed": False,
                      "refused": True, "enforcer": "BPFLSM", "result": "Permission denied",
                      "prot": "PROT_READ|PROT_EXEC"}, kind="enforce", path="", ret=-1)
    alert = _alert(refused, [_rule("anonMapExec")])
    assert (alert["Operation"], alert["Action"], alert["Result"], alert["Enforcer"]) == (
        "File", "Block", "Operation not permitted", "BPFLSM")


def _report(kind: int, pre: int, a1: int = 0, a2: int = 0, res: bytes = b"", exe: list[str] | None = None,
            rule_id: int = 3) -> bytes:
    rec = abi.BwLsmEvent()
    rec.hdr.op, rec.hdr.size, rec.hdr.ktime = abi.BW_OP_ENF_PRESET, ctypes.sizeof(rec), 5
    rec.task.pid, rec.task.tid, rec.task.mntns, rec.task.comm = 10, 10, WL.mntns, b"payload"
    rec.enf.kind, rec.enf.rule_id = kind, rule_id
    rec.enf.args[:] = (pre, a1, a2)
    rec.res = res
    parts = exe or []
    buf = b"".join(c.encode() + b"\0" for c in reversed(parts))
    rec.exe.len, rec.exe.flags, rec.exe.depth = len(buf), abi.BW_PATH_COMPLETE, len(parts)
    ctypes.memmove(ctypes.addressof(rec.exe) + abi.BwPath.buf.offset, buf, len(buf))
    return bytes(rec)


def test_preset_reports_decode_to_enforce_events() -> None:
    ref = RuleRef(WL.id, WL.mntns, "Preset", "filelessExec", "pre")
    raw = _report(abi.BW_PRESET_FILELESS_EXEC, abi.BW_PRE_MEMFD | abi.BW_PRE_KILLED, res=b"memfd:payload")
    assert is_preset_record(raw)
    rep = parse_preset_record(raw, {3: ref})
    ev = rep.to_raw_event("n1", 0, "boot")
    assert (ev.kind, ev.path, ev.exe, ev.ret, ev.syscall) == (
        "enforce", "memfd:payload", "/memfd:payload (deleted)", 0, "execve")
    assert ev.extra["killed"] is True and ev.extra["enforcer"] == "eBPF Signal" and ev.extra["policy"] == "pre"
    assert ev.extra["operation"] == "Preset" and ev.extra["preset"] == "filelessExec"
    deleted = parse_preset_record(_report(abi.BW_PRESET_FILELESS_EXEC, 0, res=b"/tmp/x (deleted)",
                                          exe=["usr", "bin", "python3"]), {})
    ev = deleted.to_raw_event("n1", 0, "boot")
    assert (ev.path, ev.exe, ev.ret, ev.extra["enforcer"], deleted.refused) == (
        "/tmp/x", "/usr/bin/python3", -1, "BPFLSM", True)
    env = parse_preset_record(_report(abi.BW_PRESET_PROTECT_ENV, 0, 4242, res=b"/proc/7/environ"), {})
    assert (env.preset, env.resource, env.syscall, env.details) == (
        "protectEnv", "/proc/7/environ", "openat", {"target_pid": 4242})
    anon = parse_preset_record(_report(abi.BW_PRESET_ANON_MAP_EXEC, abi.BW_PRE_MPROTECT | abi.BW_PRE_KILLED, 7), {})
    assert (anon.syscall, anon.details, anon.killed) == ("mprotect", {"prot": "PROT_READ|PROT_WRITE|PROT_EXEC"}, True)
    with pytest.raises(DecodeError, match="unknown preset"):
        parse_preset_record(_report(9, 0), {})


def test_enforcers_get_only_the_blocks_of_the_presets_they_claim() -> None:
    rules = [_rule("filelessExec"), _rule("protectEnv", "Audit", "env"), _rule("anonMapExec", "Audit (Block)"),
             _rule("exec")]
    rs = RuleSet(node="n1", version=1, policy_seq=1, identity_seq=1,
                 workloads={"w": WorkloadRules("w", 11, 12, rules), "gone": WorkloadRules("gone", 13, 14, rules,
                                                                                          stopped_ns=1)})
    ids: dict[RuleRef, int] = {}
    claimed = claimed_presets({"Network", route_of("filelessExec"), route_of("anonMapExec"), route_of("exec")})
    assert claimed == {"filelessExec", "anonMapExec", "exec"}
    tables = compile_presets(rs, claimed, ids)
    assert set(tables.verdicts) == {(11, abi.BW_PRESET_FILELESS_EXEC), (11, abi.BW_PRESET_EXEC)}
    assert tables.namespaces == {11: {abi.BW_PRESET_FILELESS_EXEC, abi.BW_PRESET_EXEC}}
    fileless = tables.verdicts[(11, abi.BW_PRESET_FILELESS_EXEC)]
    assert tables.refs[fileless] == RuleRef("w", 11, "Preset", "filelessExec", "pre")
    assert compile_presets(rs, claimed, ids).verdicts == tables.verdicts      # ids are stable
    only = restrict(rs, frozenset({"Process", route_of("protectEnv")}))
    assert [r.preset for r in only.workloads["w"].rules] == ["protectEnv"]
