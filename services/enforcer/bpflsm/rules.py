"""RuleSet -> the tables of the BPF-LSM programs (bpf/enforce/lsm.c): pure, no I/O.

The kernel never runs the matcher. For each selected mount namespace and kind (Process, File,
Network, Capabilities) the resources its rules name are split into classes such that every resource
of a class gets the same decision from ``shared.matcher.decide``; one representative per class is
then decided here, for every source class and access slot, and the kernel only finds the class:

- Process/File paths: an exact rule path (and the directory a ``dir`` rule names, opened itself) is an
  exact LPM entry; a ``dir`` is a prefix entry with two classes, a direct child and anything deeper.
  The longest entry that is a prefix of a path decides which rules can match it (a rule names the
  path only when its entry is a prefix of it), so ``DIR + NOWHERE`` stands for every direct child
  no exact entry names, and ``DIR + NOWHERE/NOWHERE`` for everything deeper. No entry: class 0.
- Sources (fromSource): the same over the executables' paths and directories.
- Network: the monitor's protocol name of (family, type, protocol) (shared/bpf/names.py);
  Capabilities: the capability.

Slots: access (read, write, exec) x owner (the caller's uid owns the file, or not).

Not decided in the kernel (counted in ``unsupported``, still reported by the monitor and feeder):
``pattern`` and ``execName`` rules, paths longer than ``PATH_BYTES``, and Capabilities rules with
``fromSource`` (the capable hook may not read paths). Where such a rule could
change a decision, the kernel does not block: a posture Block when the kind has any of them, a global
Block when one of them is a sourced Allow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from services.enforcer.signal.rules import CAPS, RuleRef
from shared.bpf.abi import (
    BW_ACT_AUDIT,
    BW_ACT_BLOCK,
    BW_LSM_CAP,
    BW_LSM_FILE,
    BW_LSM_NETWORK,
    BW_LSM_PATH,
    BW_LSM_PROCESS,
)
from shared.bpf.names import protocol_name
from shared.matcher import ALLOWING, Access, Decision, Posture, decide
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

__all__ = ["KINDS", "SOURCE", "NEEDS_SOURCE", "BLOCK", "AUDIT", "ANY", "PATH_BYTES", "NOWHERE", "SLOTS",
           "Classes", "LsmTables", "compile_tables", "net_keys", "slot"]

KINDS = {"Process": BW_LSM_PROCESS, "File": BW_LSM_FILE, "Network": BW_LSM_NETWORK, "Capabilities": BW_LSM_CAP}
SOURCE = 5
NEEDS_SOURCE = 8
BLOCK, AUDIT = BW_ACT_BLOCK, BW_ACT_AUDIT
ANY = 0xFFFFFFFF
PATH_BYTES = BW_LSM_PATH - 1  # path bytes an LPM key holds besides its NUL
NOWHERE = "\x01"            # a name no rule names: the representative of "everything else"
SLOTS = 8
_ACCESS = {"read": 0, "write": 1, "exec": 2}
_INET = (2, 10)
_SOCK_TYPES = (1, 2, 3, 4, 5)
_IP_PROTOS = (0, 1, 6, 17, 58, 132, 255)
_OTHER_PROTO = 253          # stands for every protocol number not in _IP_PROTOS
_UID, _OTHER_UID = 1000, 1001


def slot(access: str, owner: bool) -> int:
    """The verdict slot of an access (read/write/exec) by the owner or not."""
    return _ACCESS[access] * 2 + int(owner)


def net_keys() -> dict[tuple[int, int, int], str]:
    """(family, type, protocol or ANY) -> the monitor's protocol name, for every IP socket key."""
    out: dict[tuple[int, int, int], str] = {}
    for fam in _INET:
        for typ in _SOCK_TYPES:
            for proto in _IP_PROTOS:
                out[(fam, typ, proto)] = protocol_name(fam, typ, proto).lower()
            out[(fam, typ, ANY)] = protocol_name(fam, typ, _OTHER_PROTO).lower()
    return out


_NET_NAMES = sorted(set(net_keys().values()))
_NET_CLASS = {name: i + 1 for i, name in enumerate(_NET_NAMES)}


class Classes:
    """Stable class ids per (mntns, kind, entry): a rule change rewrites verdicts, never renumbers."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int, bytes], int] = {}
        self._next = 1

    def get(self, mntns: int, kind: int, key: bytes, width: int) -> int:
        """The class of an entry (``width`` consecutive ids: 2 for a directory)."""
        k = (mntns, kind, key)
        cls = self._ids.get(k)
        if cls is None:
            cls = self._ids[k] = self._next
            self._next += width
        return cls


@dataclass(slots=True)
class LsmTables:
    """Everything the kernel side needs, plus what a reported rule id means."""

    namespaces: dict[int, int] = field(default_factory=dict)                 # mntns -> flags
    paths: dict[tuple[int, int, bytes], tuple[int, int, int]] = field(default_factory=dict)
    # (mntns, kind, key bytes: a path + NUL, or a directory) -> (class, length, is directory)
    net: dict[tuple[int, int, int, int], int] = field(default_factory=dict)   # (mntns, fam, type, proto)
    verdicts: dict[tuple[int, int, int, int], tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    # (mntns, kind, class, source class) -> (rule ids per slot, actions per slot)
    refs: dict[int, RuleRef] = field(default_factory=dict)
    presets: dict[tuple[int, int], int] = field(default_factory=dict)  # (mntns, enum bw_preset) -> rule id
    unsupported: int = 0
    unenforced: int = 0     # Blocks the kernel leaves alone because an unsupported rule could change them


def _path_supported(rule: Rule) -> bool:
    spec = rule.path or rule.dir
    return bool(spec) and not rule.pattern and not rule.exec_name and len(spec.encode()) <= PATH_BYTES


def _cap_supported(rule: Rule) -> bool:
    return not rule.from_source  # bpf_d_path is not allowed in the capable hook: no source there


def _entries(specs: set[tuple[str, bool]], mntns: int, kind: int, classes: Classes,
             tables: LsmTables) -> list[tuple[int, str]]:
    """LPM entries for exact paths (``False``) and directories (``True``); (class, representative)s."""
    reps: list[tuple[int, str]] = [(0, NOWHERE)]
    for spec, is_dir in sorted(specs):
        raw = spec.encode()
        if is_dir:
            cls = classes.get(mntns, kind, raw, 2)
            tables.paths[(mntns, kind, raw)] = (cls, len(raw), 1)
            reps += [(cls, spec + NOWHERE), (cls + 1, spec + NOWHERE + "/" + NOWHERE)]
        else:
            key = raw + b"\0"
            cls = classes.get(mntns, kind, key, 1)
            tables.paths[(mntns, kind, key)] = (cls, len(key), 0)
            reps.append((cls, spec))
    return reps


def _resource_specs(rules: list[Rule]) -> set[tuple[str, bool]]:
    specs: set[tuple[str, bool]] = set()
    for r in rules:
        if r.path:
            specs.add((r.path, False))
        elif r.dir:
            specs.add((r.dir, True))
            if r.dir.endswith("/") and len(r.dir) > 1:
                specs.add((r.dir[:-1], False))  # the directory itself, opened
    return specs


def _source_specs(rules: list[Rule], tables: LsmTables) -> set[tuple[str, bool]]:
    specs: set[tuple[str, bool]] = set()
    for r in rules:
        for src in r.from_source:
            path, d = str(src.get("path") or ""), str(src.get("dir") or "")
            spec, is_dir = (path, False) if path else (d if d.endswith("/") else d + "/", True)
            if not (path or d):
                continue
            if len(spec.encode()) > PATH_BYTES:
                tables.unsupported += 1
                continue
            specs.add((spec, is_dir))
    return specs


def _action(decision: Decision | None, unsupported: list[Rule], tables: LsmTables) -> int:
    """The kernel's action for the matcher's decision over the supported rules."""
    if decision is None or decision.action in ALLOWING:
        return 0
    if decision.action != "Block":
        return AUDIT  # Audit, Audit (Block)
    if unsupported:
        rule = decision.rule
        could_change = rule is None or (not rule.from_source and any(
            r.from_source and r.action in ALLOWING for r in unsupported))
        if could_change:
            tables.unenforced += 1
            return 0
    return BLOCK


def _ref(wl: WorkloadRules, operation: str, decision: Decision, match: str, ids: dict[RuleRef, int],
         tables: LsmTables) -> int:
    rule = decision.rule
    spec = (rule.path or rule.dir or rule.protocol or rule.capability) if rule else ""
    ref = RuleRef(wl.workload_id, wl.mntns, operation, spec or match, decision.policy)
    rid = ids.setdefault(ref, len(ids) + 1)
    tables.refs[rid] = ref
    return rid


def _kind_verdicts(wl: WorkloadRules, operation: str, rules: list[Rule], unsupported: list[Rule],
                   resources: list[tuple[int, str]], sources: list[tuple[int, str]],
                   accesses: tuple[str, ...], ids: dict[RuleRef, int], tables: LsmTables) -> None:
    kind, posture = KINDS[operation], Posture.of(wl)
    for cls, rep in resources:
        for src_cls, src in sources:
            rule_ids, actions = [0] * SLOTS, [0] * SLOTS
            for access in accesses:
                for owner in (False, True):
                    asked = Access(operation, rep, source=src, access=access, uid=_UID,
                                   resource_owner_uid=_UID if owner else _OTHER_UID,
                                   protocol=rep if operation == "Network" else "",
                                   capability=rep if operation == "Capabilities" else "")
                    decision = decide(rules, asked, posture)
                    action = _action(decision, unsupported, tables)
                    if action and decision is not None:
                        i = slot(access, owner) if operation in ("Process", "File") else 0
                        rule_ids[i], actions[i] = _ref(wl, operation, decision, rep, ids, tables), action
            if any(actions):
                tables.verdicts[(wl.mntns, kind, cls, src_cls)] = (tuple(rule_ids), tuple(actions))


def _workload(wl: WorkloadRules, classes: Classes, ids: dict[RuleRef, int], tables: LsmTables) -> None:
    flags = 0
    sources: list[tuple[int, str]] | None = None
    for operation, kind in KINDS.items():
        rules = [r for r in wl.rules if r.operation == operation]
        if not rules:
            continue
        supported = _path_supported if operation in ("Process", "File") else (
            _cap_supported if operation == "Capabilities" else lambda r: True)
        unsupported = [r for r in rules if not supported(r)]
        tables.unsupported += len(unsupported)
        rules = [r for r in rules if supported(r)]
        if not rules:
            continue
        src_reps: list[tuple[int, str]] = [(0, NOWHERE)]
        if any(r.from_source for r in rules):
            if sources is None:
                specs = _source_specs(wl.rules, tables)
                sources = _entries(specs, wl.mntns, SOURCE, classes, tables)
            src_reps = sources
            flags |= 1 << (kind + NEEDS_SOURCE)
        if operation in ("Process", "File"):
            resources = _entries(_resource_specs(rules), wl.mntns, kind, classes, tables)
            accesses = ("exec",) if operation == "Process" else ("read", "write")
        elif operation == "Network":
            resources = [(0, NOWHERE)] + [(cls, name) for name, cls in _NET_CLASS.items()]
            for (fam, typ, proto), name in net_keys().items():
                tables.net[(wl.mntns, fam, typ, proto)] = _NET_CLASS[name]
            accesses = ("read",)
        else:
            resources = [(cap + 1, name) for name, cap in CAPS.items()]
            accesses = ("read",)
        _kind_verdicts(wl, operation, rules, unsupported, resources, src_reps, accesses, ids, tables)
        flags |= 1 << kind
    if flags:
        tables.namespaces[wl.mntns] = flags


def compile_tables(ruleset: RuleSet, ids: dict[RuleRef, int] | None = None,
                   classes: Classes | None = None) -> LsmTables:
    """The kernel tables for every running workload with rules the BPF-LSM programs judge.

    ``ids`` and ``classes`` keep rule ids and class ids stable across calls."""
    tables = LsmTables()
    ids = {} if ids is None else ids
    classes = Classes() if classes is None else classes
    for wl in ruleset.running():
        if wl.mntns:
            _workload(wl, classes, ids, tables)
    return tables
