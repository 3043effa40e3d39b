"""RuleSet -> the kernel tables of the signal programs: pure, no I/O.

Network rules (matchProtocols) become (mntns, family, type, protocol, source class) keys of ``socket()``
calls; Capabilities rules become (mntns, CAP_*, source class) keys. Whether a protocol or capability is
blocked for a workload, and for which of its programs, is asked of ``shared.matcher.decide`` (so
enforcement and alerts agree).

Sources (fromSource, a program's path: KubeArmor's schema has only ``path`` for these kinds): every path a
namespace's Network or Capabilities rules name as a source gets a class (stable across compiles); the
kernel walks the current task's executable path only in namespaces whose flags ask for it
(``NET_SOURCES``, ``CAP_SOURCES``) and finds its class in an LPM trie keyed (mntns, path); any other
program is class 0. Each class has its own complete set of keys, decided with that source (class 0 with
a path no rule names), so "allow tcp from /usr/bin/curl" under a blocking posture kills tcp for every
program but curl, and "block udp from /usr/bin/dig" kills dig's only.

``all`` is every socket: each socket type of any family and protocol (AF_UNIX and netlink too), as
KubeArmor's BPF-LSM expands it; a Block ``all`` kills at every ``socket()`` of the workload.

A network allow-list under a blocking posture (``network_posture: block`` and an Allow rule for
Network) kills every inet protocol no Allow rule names (``POSTURE_PROTOCOLS``; the kill is reported
with policy ``DefaultPosture``, as the matcher decides).

Presets the enforcer claims (``Preset:filelessExec``...) become (mntns, preset) verdicts
(services.enforcer.presets).

Not expressible in the kernel tables (counted, never enforced, still reported by the monitor):
sources other than a path or longer than ``SOURCE_BYTES``, and capabilities the kernel checks silently
all the time (``NOISY_CAPS``: the cap_capable tracepoint cannot tell such a CAP_OPT_NOAUDIT probe from
a real use, so killing on them would kill innocent processes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from shared.bpf.abi import BW_LSM_PATH
from shared.bpf.names import CAPABILITIES
from shared.matcher import POSTURE_POLICY, Access, decide
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

__all__ = ["ANY", "ALL_TYPES", "PROTOCOLS", "POSTURE_PROTOCOLS", "CAPS", "NOISY_CAPS", "NET_SOURCES", "CAP_SOURCES",
           "SOURCE_BYTES", "RuleRef", "SignalTables", "compile_tables", "OPERATIONS"]

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
_NAMED_INET = ("tcp", "udp", "icmp", "icmpv6", "sctp")  # protocols the matcher tells apart from ``all``
# what a blocking network posture kills: the inet protocols a KubeArmor allow-list names (never AF_UNIX)
POSTURE_PROTOCOLS: dict[str, tuple[tuple[int, int, int], ...]] = {
    **{name: PROTOCOLS[name] for name in _NAMED_INET},
    "raw": tuple((f, SOCK_RAW, ANY) for f in _INET),
}
CAPS: dict[str, int] = {name: i for i, name in enumerate(CAPABILITIES)}
NOISY_CAPS = frozenset({"sys_admin", "sys_resource", "ipc_lock"})
# bw_enf_ns flags (bpf/enforce/signal.c): selected, and which kinds look up the executable's source class
SELECTED, NET_SOURCES, CAP_SOURCES = 1, 2, 4
SOURCE_BYTES = BW_LSM_PATH - 1  # a source path's bytes an LPM key holds besides its NUL
NOWHERE = "\x01"  # a program no rule names: the representative of source class 0


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

    namespaces: dict[int, int] = field(default_factory=dict)              # mntns -> flags (SELECTED...)
    net: dict[tuple[int, int, int, int, int], int] = field(default_factory=dict)   # key + source class -> rule id
    # (0: allowed, a stop for the kernel's lookup before a wildcard key)
    cap: dict[tuple[int, int, int], int] = field(default_factory=dict)            # (mntns, cap, source class)
    sources: dict[tuple[int, bytes], int] = field(default_factory=dict)  # (mntns, path + NUL) -> source class
    refs: dict[int, RuleRef] = field(default_factory=dict)
    presets: dict[tuple[int, int], int] = field(default_factory=dict)  # (mntns, enum bw_preset) -> rule id
    unsupported: int = 0


def _name(rule: Rule) -> str:
    return (rule.protocol if rule.operation == "Network" else rule.capability).lower().removeprefix("cap_")


def _source_paths(rules: list[Rule]) -> tuple[set[str], bool]:
    """The source paths the kernel can tell apart, and whether some source cannot be (no path, too long)."""
    paths: set[str] = set()
    unusable = False
    for rule in rules:
        for src in rule.from_source:
            path = str(src.get("path") or "")
            if path and len(path.encode()) <= SOURCE_BYTES:
                paths.add(path)
            else:
                unusable = True
    return paths, unusable


def _blocking_rule(rules: list[Rule], operation: str, name: str, source: str) -> Rule | None:
    """The Block rule for ``name`` used by ``source``, as the matcher decides (no posture here)."""
    decision = decide(rules, Access(operation=operation, resource=name, source=source))
    if decision is None or decision.action != "Block":
        return None
    return next((r for r in rules if r.operation == operation and r.policy == decision.policy
                 and _name(r) == name), None) or next(r for r in rules if r.policy == decision.policy)


def _ref(tables: SignalTables, ids: dict[RuleRef, int], ref: RuleRef) -> int:
    rid = ids.setdefault(ref, len(ids) + 1)
    tables.refs[rid] = ref
    return rid


def compile_tables(ruleset: RuleSet, ids: dict[RuleRef, int] | None = None,
                   source_ids: dict[tuple[int, str], int] | None = None) -> SignalTables:
    """The kernel tables for every running workload with Network/Capabilities Block rules (presets:
    the enforcer adds them, services.enforcer.presets).

    ``ids`` keeps rule ids stable across calls (a rule keeps its id; new ones get fresh ids), and
    ``source_ids`` source classes (a namespace's source path keeps its class)."""
    tables = SignalTables()
    ids = {} if ids is None else ids
    source_ids = {} if source_ids is None else source_ids
    for wl in ruleset.running():
        if not wl.mntns:
            continue
        rules = [r for r in wl.rules if r.operation in OPERATIONS]
        paths, unusable = _source_paths(rules)
        tables.unsupported += int(unusable)
        sources = [(0, NOWHERE)] + [(source_ids.setdefault((wl.mntns, p), len(source_ids) + 1), p)
                                    for p in sorted(paths)]
        # ``all`` last: a protocol's own rule keeps the keys it shares with ``all`` (raw, stream...)
        blocked = sorted({(r.operation, _name(r)) for r in rules if r.action == "Block"},
                         key=lambda k: (k[0], k[1] == "all", k[1]))
        kept = []
        for operation, name in blocked:
            if (operation == "Network" and name not in PROTOCOLS) or (
                    operation == "Capabilities" and (name not in CAPS or name in NOISY_CAPS)):
                tables.unsupported += 1
            else:
                kept.append((operation, name))
        before = len(tables.net) + len(tables.cap)
        for cls, source in sources:
            for operation, name in kept:
                rule = _blocking_rule(rules, operation, name, source)
                if rule is None:
                    continue
                rid = _ref(tables, ids, RuleRef(wl.workload_id, wl.mntns, operation, name, rule.policy))
                if operation == "Capabilities":
                    tables.cap.setdefault((wl.mntns, CAPS[name], cls), rid)
                    continue
                if name == "all":
                    _carve_out(wl, tables, ids, cls, source)
                for fam, typ, proto in PROTOCOLS[name]:
                    tables.net.setdefault((wl.mntns, fam, typ, proto, cls), rid)
            _network_posture(wl, rules, tables, ids, cls, source)
        if len(tables.net) + len(tables.cap) == before:
            continue
        flags = SELECTED
        if len(sources) > 1:
            flags |= NET_SOURCES if any(r.from_source for r in rules if r.operation == "Network") else 0
            flags |= CAP_SOURCES if any(r.from_source for r in rules if r.operation == "Capabilities") else 0
            for cls, source in sources[1:]:
                tables.sources[(wl.mntns, source.encode() + b"\0")] = cls
        tables.namespaces[wl.mntns] = flags
    return tables


def _carve_out(wl: WorkloadRules, tables: SignalTables, ids: dict[RuleRef, int], cls: int, source: str) -> None:
    """Before a Block ``all`` (wildcard keys) goes in: each inet protocol gets its own keys with what the
    matcher decides for it (a sourced Allow of tcp beats a Block of all; 0 = allowed), so the kernel's
    lookup stops there instead of falling through to the wildcard."""
    for name in _NAMED_INET:
        decision = decide(wl, Access(operation="Network", resource=name, protocol=name, source=source))
        rid = 0
        if decision is not None and decision.action == "Block":
            match = _name(decision.rule) if decision.rule is not None else name
            rid = _ref(tables, ids, RuleRef(wl.workload_id, wl.mntns, "Network", match, decision.policy))
        for fam, typ, proto in PROTOCOLS[name]:
            tables.net.setdefault((wl.mntns, fam, typ, proto, cls), rid)


def _network_posture(wl: WorkloadRules, rules: list[Rule], tables: SignalTables, ids: dict[RuleRef, int],
                     cls: int, source: str) -> None:
    """The protocols a network allow-list under a ``block`` posture leaves out for ``source`` (source class
    ``cls``), killed as DefaultPosture."""
    if wl.network_posture != "block" or wl.audited:
        return
    if not any(r.operation == "Network" and r.action == "Allow" for r in rules):
        return
    for name, keys in POSTURE_PROTOCOLS.items():
        decision = decide(wl, Access(operation="Network", resource=name, protocol=name, source=source))
        if decision is None or decision.action != "Block" or decision.policy != POSTURE_POLICY:
            continue
        rid = _ref(tables, ids, RuleRef(wl.workload_id, wl.mntns, "Network", name, POSTURE_POLICY))
        for fam, typ, proto in keys:
            tables.net.setdefault((wl.mntns, fam, typ, proto, cls), rid)
