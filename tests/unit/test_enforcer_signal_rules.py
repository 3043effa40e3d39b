"""Signal enforcer tables from a RuleSet, the kill event's wire form, and the composite enforcer."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.enforcer.composite import CompositeEnforcer, restrict
from services.enforcer.reports.kernel import KillRecord, to_raw_event
from services.enforcer.signal.rules import (
    ALL_TYPES,
    ANY,
    CAP_SOURCES,
    CAPS,
    NET_SOURCES,
    SELECTED,
    RuleRef,
    compile_tables,
)
from shared.schemas.rules import Rule, RuleSet, WorkloadRules


def rule(op: str, action: str = "Block", **kw) -> Rule:
    return Rule(policy=f"p-{op}", policy_kind="KubeArmorPolicy", policy_namespace="d", operation=op,
                action=action, **kw)


def rs(*wls: WorkloadRules) -> RuleSet:
    return RuleSet(node="n", version=1, policy_seq=1, identity_seq=1, workloads={w.workload_id: w for w in wls})


def test_protocols_and_caps_become_keys_per_namespace() -> None:
    t = compile_tables(rs(WorkloadRules("a", 11, 0, [rule("Network", protocol="tcp"),
                                                     rule("Capabilities", capability="net_raw")]),
                          WorkloadRules("b", 22, 0, [rule("Network", protocol="raw")]),
                          WorkloadRules("c", 33, 0, [rule("Network", protocol="udp")], stopped_ns=1)))
    assert t.namespaces == {11: 1, 22: 1}
    assert (11, 2, 1, 6, 0) in t.net and (11, 10, 1, 0, 0) in t.net and (11, 2, 2, 0, 0) not in t.net
    assert (22, ANY, 3, ANY, 0) in t.net
    assert t.cap == {(11, CAPS["net_raw"], 0): t.cap[(11, 13, 0)]}
    assert {r.match for r in t.refs.values()} == {"tcp", "net_raw", "raw"}


def test_audit_allow_and_noisy_rules_are_not_killed() -> None:
    sourced = rule("Network", protocol="udp", from_source=[{"dir": "/bin/"}])
    t = compile_tables(rs(WorkloadRules("a", 11, 0, [rule("Network", "Audit", protocol="tcp"), sourced,
                                                     rule("Capabilities", capability="sys_admin"),
                                                     rule("Network", protocol="carrier-pigeon")])))
    assert not t.net and not t.cap and not t.namespaces and t.unsupported == 3


def test_rule_ids_are_stable_across_compiles() -> None:
    ids: dict[RuleRef, int] = {}
    one = compile_tables(rs(WorkloadRules("a", 11, 0, [rule("Network", protocol="tcp")])), ids)
    two = compile_tables(rs(WorkloadRules("b", 22, 0, [rule("Network", protocol="udp")]),
                            WorkloadRules("a", 11, 0, [rule("Network", protocol="tcp")])), ids)
    assert one.net[(11, 2, 1, 0, 0)] == two.net[(11, 2, 1, 0, 0)]
    assert two.net[(22, 2, 2, 0, 0)] != two.net[(11, 2, 1, 0, 0)]


def test_kill_event_wire_form() -> None:
    rec = KillRecord(5, 10, 11, 9, 0, 0, 11, 7, 2, 1, 2, 1, (13, 0, 0), 3, "ping", "/usr/bin/ping",
                     RuleRef("a", 11, "Capabilities", "net_raw", "p"))
    ev = to_raw_event(rec, "node", 100, "boot")
    assert (ev.kind, ev.ts_ns, ev.path, ev.ret, ev.syscall) == ("enforce", 105, "CAP_NET_RAW", 0, "capable")
    assert ev.extra == {"killed": True, "signal": "SIGKILL", "enforcer": "eBPF Signal", "result": "Killed (SIGKILL)",
                        "operation": "Capabilities", "resource": "CAP_NET_RAW", "match": "net_raw",
                        "policy": "p", "workload_id": "a"}
    from services.feeder.kinds import access_for, kind_fields
    acc = access_for(ev)
    assert acc is not None and (acc.operation, acc.capability) == ("Capabilities", "net_raw")
    assert kind_fields(ev)["Operation"] == "Capabilities"


class Part:
    def __init__(self, name: str, ops: frozenset[str]) -> None:
        self.name, self.operations, self.applied, self.closed = name, ops, None, False

    def probe(self):
        return True, "ok"

    def apply(self, ruleset: RuleSet) -> None:
        self.applied = ruleset

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict[str, int]:
        return {"denied": 1}


def test_composite_gives_each_part_its_operations() -> None:
    fan, sig = Part("Fanotify", frozenset({"Process", "File"})), Part("eBPF Signal", frozenset({"Network"}))
    comp = CompositeEnforcer([(fan, fan.operations), (sig, sig.operations)])
    wl = WorkloadRules("a", 11, 0, [rule("Process", path="/x"), rule("Network", protocol="tcp")],
                       file_posture="block")
    comp.apply(rs(wl))
    assert [r.operation for r in fan.applied.workloads["a"].rules] == ["Process"]
    assert [r.operation for r in sig.applied.workloads["a"].rules] == ["Network"]
    assert fan.applied.workloads["a"].file_posture == "block" and wl.rules[1].operation == "Network"
    assert comp.name == "Fanotify + eBPF Signal" and comp.alert_name == "Fanotify"
    assert comp.by_operation() == {"File": "Fanotify", "Process": "Fanotify", "Network": "eBPF Signal"}
    assert comp.stats() == {"denied": 1, "signal_denied": 1}
    comp.close()
    assert fan.closed and sig.closed
    assert restrict(rs(wl), frozenset()).workloads["a"].rules == []


def _lsm_record(kind: int, action: int, args: tuple[int, int, int], res: bytes, rule_id: int = 1) -> bytes:
    """A struct bw_lsm_event as bpf/enforce/lsm.c writes it (built from shared/bpf/abi.py)."""
    import ctypes

    from shared.bpf import abi

    rec = abi.BwLsmEvent()
    rec.hdr.op, rec.hdr.size, rec.hdr.ktime = abi.BW_OP_ENF_LSM, ctypes.sizeof(rec), 7
    t = rec.task
    t.pid, t.tid, t.ppid, t.mntns, t.pidns, t.ns_pid, t.cgroup_id, t.comm = (
        10, 11, 1, 4026532000, 4026531836, 1, 99, b"bwtrue")
    rec.enf.kind, rec.enf.rule_id = kind | (action << 8), rule_id
    rec.enf.args[:] = args
    rec.res = res
    rec.exe.len, rec.exe.flags, rec.exe.depth = 13, abi.BW_PATH_COMPLETE, 3
    exe = b"true\0bin\0usr\0"  # /usr/bin/true, leaf first (a char array field would stop at the first NUL)
    ctypes.memmove(ctypes.addressof(rec) + abi.offset(abi.BwLsmEvent, "exe.buf"), exe, len(exe))
    return bytes(rec)


def test_bpflsm_records_become_refused_or_audited_events() -> None:
    from services.enforcer.reports.kernel import parse_lsm_record

    ref = RuleRef("w1", 4026532000, "File", "/etc/", "no-etc")
    rec = parse_lsm_record(_lsm_record(2, 1, (1, 0, 0), b"/etc/hosts"), {1: ref})
    assert rec.refused and rec.operation == "File" and rec.access == "write" and not rec.owner
    assert rec.path == rec.resource == rec.match == "/etc/hosts" and rec.head.exe == "/usr/bin/true"
    ev = to_raw_event(rec, "n1", 0, "boot")
    assert ev.kind == "enforce" and ev.ret == -1 and ev.path == "/etc/hosts" and ev.syscall == "open"
    assert ev.extra["enforcer"] == "BPFLSM" and ev.extra["refused"] is True and ev.extra["killed"] is False
    assert ev.extra["result"] == "Permission denied" and ev.extra["policy"] == "no-etc"
    net = parse_lsm_record(_lsm_record(3, 2, (2, 3, 255), b""), {})
    assert not net.refused and net.operation == "Network" and net.match == "raw" and net.access == ""
    assert net.resource == "domain=AF_INET type=SOCK_RAW protocol=255"
    audit = to_raw_event(net, "n1", 0, "boot")
    assert audit.ret == 0 and audit.extra["result"] == "Passed" and audit.extra["refused"] is False
    cap = parse_lsm_record(_lsm_record(4, 1, (27, 0, 0), b""), {})
    assert cap.match == "mknod" and cap.resource == "CAP_MKNOD" and to_raw_event(cap, "n", 0, "b").syscall == "capable"


def test_block_all_kills_every_socket_type_of_any_family() -> None:
    """KubeArmor's ``protocol: all``: every socket type, any family and protocol (ping's icmp included)."""
    t = compile_tables(rs(WorkloadRules("a", 11, 0, [rule("Network", protocol="all")])))
    assert {(11, ANY, typ, ANY, 0) for typ in ALL_TYPES} <= set(t.net)
    assert t.unsupported == 0 and t.namespaces == {11: 1} and all(t.net.values())
    assert {r.match for r in t.refs.values()} == {"all"}
    # ping: socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), then SOCK_RAW; AF_UNIX stream too
    for key in ((2, 2, 1), (2, 3, 1), (10, 2, 58), (1, 1, 0), (2, 1, 6)):
        assert (11, ANY, key[1], ANY, 0) in t.net, key


def test_block_all_leaves_a_protocols_own_rule_its_keys() -> None:
    raw = Rule(policy="p-raw", policy_kind="KubeArmorPolicy", policy_namespace="d", operation="Network",
               action="Block", protocol="raw")
    t = compile_tables(rs(WorkloadRules("a", 11, 0, [rule("Network", protocol="all"), raw])))
    assert t.refs[t.net[(11, ANY, 3, ANY, 0)]].match == "raw"
    assert t.refs[t.net[(11, ANY, 1, ANY, 0)]].match == "all"


def test_audit_all_is_not_killed_and_sourced_all_kills_its_source_only() -> None:
    sourced = rule("Network", protocol="all", from_source=[{"path": "/bin/ping"}])
    t = compile_tables(rs(WorkloadRules("a", 11, 0, [rule("Network", "Audit", protocol="all")]),
                          WorkloadRules("b", 22, 0, [sourced])))
    ping = t.sources[(22, b"/bin/ping\0")]
    assert t.unsupported == 0 and ping > 0 and t.namespaces == {22: SELECTED | NET_SOURCES}
    assert {k for k, rid in t.net.items() if rid} >= {(22, ANY, typ, ANY, ping) for typ in ALL_TYPES}
    assert {k[4] for k, rid in t.net.items() if rid} == {ping} and (22, 2, 1, 6, 0) not in t.net


def test_allow_all_under_blocking_posture_kills_nothing_but_a_sourced_one_kills_the_others() -> None:
    wl = WorkloadRules("a", 11, 0, [rule("Network", "Allow", protocol="all")], network_posture="block")
    assert not compile_tables(rs(wl)).net
    sourced = WorkloadRules("b", 22, 0, [rule("Network", "Allow", protocol="all", from_source=[{"path": "/x"}])],
                            network_posture="block")
    t = compile_tables(rs(sourced))
    assert t.unsupported == 0 and {k[4] for k in t.net} == {0}
    assert {t.refs[rid].policy for rid in t.net.values()} == {"DefaultPosture"}
    assert (22, 2, 1, 6, 0) in t.net and (22, 2, 2, 17, 0) in t.net and t.sources == {(22, b"/x\0"): 1}


def test_tcp_from_one_program_under_blocking_posture() -> None:
    """KubeArmor's github_test_12: tcp allowed from curl only, udp from every program, posture block."""
    wl = WorkloadRules("a", 11, 0, [rule("Network", "Allow", protocol="tcp", from_source=[{"path": "/usr/bin/curl"}]),
                                    rule("Network", "Allow", protocol="udp")], network_posture="block")
    source_ids: dict[tuple[int, str], int] = {}
    t = compile_tables(rs(wl), None, source_ids)
    curl = t.sources[(11, b"/usr/bin/curl\0")]
    assert t.namespaces == {11: SELECTED | NET_SOURCES}
    assert (11, 2, 1, 6, 0) in t.net and (11, 10, 1, 0, 0) in t.net          # tcp: everyone else
    assert not any(k[4] == curl and k[2] == 1 and k[3] in (0, 6) for k in t.net)  # tcp: not curl
    assert not any(k[2] == 2 and k[3] in (0, 17) for k in t.net)             # udp: nobody
    assert (11, 2, 3, ANY, curl) in t.net and (11, 2, 3, ANY, 0) in t.net    # raw: everybody
    again = compile_tables(rs(WorkloadRules("b", 22, 0, [rule("Network", protocol="udp", from_source=[
        {"path": "/usr/bin/dig"}])]), wl), None, source_ids)
    assert again.sources[(11, b"/usr/bin/curl\0")] == curl                  # classes stay
    dig = again.sources[(22, b"/usr/bin/dig\0")]
    assert {k for k in again.net if k[0] == 22} == {(22, f, 2, p, dig) for f in (2, 10) for p in (0, 17)}


def test_capability_from_source() -> None:
    wl = WorkloadRules("a", 11, 0, [rule("Capabilities", capability="net_raw", from_source=[{"path": "/bin/ping"}]),
                                    rule("Capabilities", capability="chown")])
    t = compile_tables(rs(wl))
    ping = t.sources[(11, b"/bin/ping\0")]
    assert t.namespaces == {11: SELECTED | CAP_SOURCES}
    assert set(t.cap) == {(11, 13, ping), (11, CAPS["chown"], 0), (11, CAPS["chown"], ping)}


# -- agreement with the matcher: what the kernel tables kill is what the matcher blocks ---------------------
_PROBES = {"tcp": (2, 1, 6), "udp": (2, 2, 17), "icmp": (2, 2, 1)}  # a socket() of each, as the kernel sees it
_SOURCES = ("/bin/a", "/bin/b")


def _kernel_blocks(t, mntns: int, key: tuple[int, int, int], exe: str) -> bool:
    """bpf/enforce/signal.c's lookup: the executable's source class where the namespace asks for it, then
    (family, type, protocol), protocol ANY, family ANY, both ANY, all with that class."""
    flags = t.namespaces.get(mntns, 0)
    if not flags:
        return False
    src = t.sources.get((mntns, exe.encode() + b"\0"), 0) if flags & NET_SOURCES else 0
    fam, typ, proto = key
    for f, p in ((fam, proto), (fam, ANY), (ANY, proto), (ANY, ANY)):
        rid = t.net.get((mntns, f, typ, p, src))
        if rid is not None:
            return rid != 0  # 0: allowed, the lookup stops there
    return False


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tcp", "udp", "icmp", "all"]), st.sampled_from(["Block", "Allow", "Audit"]),
                          st.lists(st.sampled_from(_SOURCES), max_size=2, unique=True)), max_size=5),
       st.sampled_from(["block", "audit"]))
def test_signal_tables_kill_exactly_what_the_matcher_blocks(specs, posture) -> None:
    from shared.matcher import Access, decide

    rules = [rule("Network", action, protocol=proto, from_source=[{"path": s} for s in srcs])
             for proto, action, srcs in specs]
    wl = WorkloadRules("a", 11, 0, rules, network_posture=posture)
    t = compile_tables(rs(wl))
    for exe in (*_SOURCES, "/bin/c"):
        for name, key in _PROBES.items():
            decision = decide(wl, Access(operation="Network", resource=name, protocol=name, source=exe))
            want = decision is not None and decision.action == "Block"
            assert _kernel_blocks(t, 11, key, exe) == want, (exe, name, decision)
