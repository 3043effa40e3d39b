"""RuleSet -> the kernel tables of the signal (and BPF-LSM) programs: pure, no I/O.

Network rules (matchProtocols) become (mntns, family, type, protocol) keys of ``socket()`` calls;
Capabilities rules become (mntns, CAP_*) keys. Whether a protocol or capability is blocked for a
workload is asked of ``shared.matcher.decide`` (so enforcement and alerts agree). While the matcher
does not yet know Network/Capabilities resources (decide returns None for a rule that names exactly
that protocol or capability), the rule's own action is used and ``matcher_fallback`` counted.

``all`` is every socket: each socket type of any family and protocol (AF_UNIX and netlink too), as
KubeArmor's BPF-LSM expands it; a Block ``all`` kills at every ``socket()`` of the workload.

A network allow-list under a blocking posture (``network_posture: block`` and an Allow rule for
Network) kills every inet protocol no Allow rule names (``POSTURE_PROTOCOLS``; the kill is reported
with policy ``DefaultPosture``, as the matcher decides). A protocol allowed only ``fromSource`` cannot
be told apart by source in the kernel: it is counted unsupported and left to the monitor's report.

Presets the enforcer claims (``Preset:filelessExec``...) become (mntns, preset) verdicts
(services.enforcer.presets).

Not expressible in the kernel tables (counted, never enforced, still reported by the monitor):
rules with ``fromSource`` (the source executable is not part of the key), and capabilities the
kernel checks silently all the time (``NOISY_CAPS``: the cap_capable tracepoint cannot tell such a
CAP_OPT_NOAUDIT probe from a real use, so killing on them would kill innocent processes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.bpf.names import CAPABILITIES
from shared.matcher import POSTURE_POLICY, Access, decide
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

__all__ = ["ANY", "ALL_TYPES", "PROTOCOLS", "POSTURE_PROTOCOLS", "CAPS", "NOISY_CAPS", "RuleRef", "SignalTables",
           "compile_tables", "OPERATIONS"]

OPERATIONS = frozenset({"Network", "Capabilities"})
ANY = 0xFFFFFFFF
AF_INET, AF_INET6 = 2, 10
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_RDM, SOCK_SEQPACKET, SOCK_DCCP, SOCK_PACKET = 1, 2, 3, 4, 5, 6, 10
# every socket type KubeArmor's ``all`` stands for (its BPF-LSM expands ``all`` to these types, any family)
ALL_TYPES = (SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_RDM, SOCK_SEQPACKET, SOCK_DCCP, SOCK_PACKET)
_INET = (AF_INET, AF_INET6)
# protocol name -> (family, type, protocol) keys of socket() calls that open such a socket
PROTOCOLS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "tcp": tuple((f, SOCK_STREAM, p) for f in _INET for p in (0, 6)),
    "udp": tuple((f, SOCK_DGRAM, p) for f in _INET for p in (0, 17)),
    "icmp": ((AF_INET, SOCK_DGRAM, 1), (AF_INET, SOCK_RAW, 1)),
    "icmpv6": ((AF_INET6, SOCK_DGRAM, 58), (AF_INET6, SOCK_RAW, 58)),
    "sctp": tuple((f, t, 132) for f in _INET for t in (SOCK_STREAM, SOCK_SEQPACKET)),
    "raw": ((ANY, SOCK_RAW, ANY),),
    "stream": ((ANY, SOCK_STREAM, ANY),),
    "dgram": ((ANY, SOCK_DGRAM, ANY),),
    "rdm": ((ANY, SOCK_RDM, ANY),),
    "seqpacket": ((ANY, SOCK_SEQPACKET, ANY),),
    "dccp": ((ANY, SOCK_DCCP, ANY),),
    "packet": ((ANY, SOCK_PACKET, ANY),),
    "all": tuple((ANY, t, ANY) for t in ALL_TYPES),
}
# what a blocking network posture kills: the inet protocols a KubeArmor allow-list names (never AF_UNIX)
POSTURE_PROTOCOLS: dict[str, tuple[tuple[int, int, int], ...]] = {
    **{name: PROTOCOLS[name] for name in ("tcp", "udp", "icmp", "icmpv6", "sctp")},
    "raw": tuple((f, SOCK_RAW, ANY) for f in _INET),
}
CAPS: dict[str, int] = {name: i for i, name in enumerate(CAPABILITIES)}
NOISY_CAPS = frozenset({"sys_admin", "sys_resource", "ipc_lock"})


@dataclass(frozen=True, slots=True)
class RuleRef:
    """What a kernel verdict stands for: the workload, the operation and the matched resource."""

    workload_id: str
    mntns: int
    operation: str
    match: str
    policy: str


@dataclass(slots=True)
class SignalTables:
    """Everything the kernel side needs, plus what a reported rule id means."""

    namespaces: set[int] = field(default_factory=set)
    net: dict[tuple[int, int, int, int], int] = field(default_factory=dict)   # key -> rule id
    cap: dict[tuple[int, int], int] = field(default_factory=dict)
    refs: dict[int, RuleRef] = field(default_factory=dict)
    presets: dict[tuple[int, int], int] = field(default_factory=dict)  # (mntns, enum bw_preset) -> rule id
    unsupported: int = 0
    matcher_fallback: int = 0


def _name(rule: Rule) -> str:
    return (rule.protocol if rule.operation == "Network" else rule.capability).lower().removeprefix("cap_")


def _verdict(rules: list[Rule], operation: str, name: str, tables: SignalTables) -> Rule | None:
    """The Block rule for ``name``, as the matcher decides (or, where it cannot yet, the rules say)."""
    decision = decide(rules, Access(operation=operation, resource=name))
    if decision is not None:
        if decision.action != "Block":
            return None
        return next((r for r in rules if r.operation == operation and r.policy == decision.policy
                     and _name(r) == name), None) or next(r for r in rules if r.policy == decision.policy)
    named = [r for r in rules if r.operation == operation and _name(r) == name]
    if not named:
        return None
    tables.matcher_fallback += 1
    if any(r.action == "Block" for r in named) and not any(r.from_source for r in named if r.action == "Block"):
        return next(r for r in named if r.action == "Block")
    return None


def compile_tables(ruleset: RuleSet, ids: dict[RuleRef, int] | None = None) -> SignalTables:
    """The kernel tables for every running workload with Network/Capabilities Block rules (presets:
    the enforcer adds them, services.enforcer.presets).

    ``ids`` keeps rule ids stable across calls (a rule keeps its id; new ones get fresh ids)."""
    tables = SignalTables()
    ids = {} if ids is None else ids
    for wl in ruleset.running():
        if not wl.mntns:
            continue
        rules = [r for r in wl.rules if r.operation in OPERATIONS]
        # ``all`` last: a protocol's own rule keeps the keys it shares with ``all`` (raw, stream...)
        blocked = {(r.operation, _name(r)) for r in rules if r.action == "Block"}
        for operation, name in sorted(blocked, key=lambda k: (k[0], k[1] == "all", k[1])):
            if any(r.from_source for r in rules if r.operation == operation and _name(r) == name):
                tables.unsupported += 1
                continue
            if (operation == "Network" and name not in PROTOCOLS) or (
                    operation == "Capabilities" and (name not in CAPS or name in NOISY_CAPS)):
                tables.unsupported += 1
                continue
            rule = _verdict(rules, operation, name, tables)
            if rule is None:
                continue
            ref = RuleRef(wl.workload_id, wl.mntns, operation, name, rule.policy)
            rid = ids.setdefault(ref, len(ids) + 1)
            tables.refs[rid] = ref
            tables.namespaces.add(wl.mntns)
            if operation == "Network":
                for fam, typ, proto in PROTOCOLS[name]:
                    tables.net.setdefault((wl.mntns, fam, typ, proto), rid)
            else:
                tables.cap.setdefault((wl.mntns, CAPS[name]), rid)
        _network_posture(wl, rules, tables, ids)
    return tables


def _network_posture(wl: WorkloadRules, rules: list[Rule], tables: SignalTables, ids: dict[RuleRef, int]) -> None:
    """The protocols a network allow-list under a ``block`` posture leaves out, killed as DefaultPosture."""
    allows = [r for r in rules if r.operation == "Network" and r.action == "Allow"]
    if wl.network_posture != "block" or wl.audited or not allows:
        return
    for name, keys in POSTURE_PROTOCOLS.items():
        named = [r for r in allows if _name(r) in (name, "all")]
        if named:
            if all(r.from_source for r in named):
                tables.unsupported += 1  # allowed for some programs only: the kernel key has no source
            continue
        decision = decide(wl, Access(operation="Network", resource=name, protocol=name))
        if decision is None or decision.action != "Block" or decision.policy != POSTURE_POLICY:
            continue
        ref = RuleRef(wl.workload_id, wl.mntns, "Network", name, POSTURE_POLICY)
        rid = ids.setdefault(ref, len(ids) + 1)
        tables.refs[rid] = ref
        tables.namespaces.add(wl.mntns)
        for fam, typ, proto in keys:
            tables.net.setdefault((wl.mntns, fam, typ, proto), rid)
