"""RuleSet -> the preset verdicts of the enforcement programs (bw_enf_preset in bpf/enforce/bw_enforce.h).

Pure, no I/O; shared by the eBPF signal and BPF-LSM enforcers. For each running workload and each
preset the enforcer can block, ``shared.matcher.decide`` says what the workload's rules want for that
preset's attack (so enforcement and alerts agree); only a Block becomes a kernel verdict (an Audit is
reported by the monitor, an ``Audit (Block)`` is never enforced). A verdict names the rule that asked
for it (``RuleRef``: operation ``Preset``, match = the preset's name) for the report.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from services.enforcer.signal.rules import RuleRef
from shared.matcher import Access, decide
from shared.presets import PRESET_OPERATION, PRESETS, ROUTE_PREFIX
from shared.schemas.rules import RuleSet

__all__ = ["PresetTables", "compile_presets", "claimed_presets"]


@dataclass(slots=True)
class PresetTables:
    """(mntns, enum bw_preset) -> rule id of every Block, the presets per namespace, and the refs."""

    verdicts: dict[tuple[int, int], int] = field(default_factory=dict)
    namespaces: dict[int, set[int]] = field(default_factory=dict)
    refs: dict[int, RuleRef] = field(default_factory=dict)


def claimed_presets(operations: Iterable[str]) -> frozenset[str]:
    """The preset names among an enforcer's claims (``Preset:filelessExec`` -> ``filelessExec``)."""
    return frozenset(op[len(ROUTE_PREFIX):] for op in operations if op.startswith(ROUTE_PREFIX))


def compile_presets(ruleset: RuleSet, presets: Iterable[str], ids: dict[RuleRef, int]) -> PresetTables:
    """The verdicts for ``presets`` (names) of every running workload whose rules Block them.

    ``ids`` keeps rule ids stable across calls and shared with the enforcer's other verdicts."""
    tables = PresetTables()
    wanted = [PRESETS[name] for name in sorted(presets) if name in PRESETS]
    for wl in ruleset.running():
        if not wl.mntns or not any(r.operation == PRESET_OPERATION for r in wl.rules):
            continue
        for info in wanted:
            decision = decide(wl, Access(PRESET_OPERATION, preset=info.name))
            if decision is None or decision.action != "Block":
                continue
            ref = RuleRef(wl.workload_id, wl.mntns, PRESET_OPERATION, info.name, decision.policy)
            rid = ids.setdefault(ref, len(ids) + 1)
            tables.refs[rid] = ref
            tables.verdicts[(wl.mntns, info.kernel_id)] = rid
            tables.namespaces.setdefault(wl.mntns, set()).add(info.kernel_id)
    return tables
