"""KubeArmor's policy presets as Bulwark implements them: names, what each catches, who can block it.

A policy's ``spec.presets: [{name, action}]`` compiles to rules of operation ``Preset`` whose
``preset`` names one (services.policy.model); the matcher matches such a rule only against an
access of the same preset (shared.matcher). Each preset has the KubeArmor Operation its alerts
carry, its number in the kernel records (events.h ``enum bw_preset``) and its visibility bit (the
monitor emits its records only for mount namespaces whose rules ask for it). Enforcers claim a preset
by its route (``Preset:<name>``), so one that blocks fileless execs need not claim every Process rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.bpf.abi import (
    BW_PRESET_ANON_MAP_EXEC,
    BW_PRESET_EXEC,
    BW_PRESET_FILELESS_EXEC,
    BW_PRESET_PROTECT_ENV,
    BW_VIS_PRESET_ANON_EXEC,
    BW_VIS_PRESET_ENTERED,
    BW_VIS_PRESET_ENV,
    BW_VIS_PRESET_FILELESS,
)

__all__ = ["PRESET_OPERATION", "ROUTE_PREFIX", "PresetInfo", "PRESETS", "BY_KERNEL_ID", "ROUTES", "route",
           "route_of", "alert_operation"]

PRESET_OPERATION = "Preset"
ROUTE_PREFIX = "Preset:"


@dataclass(frozen=True, slots=True)
class PresetInfo:
    """One preset: its name, the Operation its alerts carry, its kernel numbers and who blocks it."""

    name: str
    operation: str
    kernel_id: int
    vis_bit: int
    catches: str
    blocked_by: str  # in words, for policy warnings and ``bulwark probe``


PRESETS: dict[str, PresetInfo] = {p.name: p for p in (
    PresetInfo("filelessExec", "Process", BW_PRESET_FILELESS_EXEC, BW_VIS_PRESET_FILELESS,
               "an exec of a file with no link left: a memfd, a deleted file",
               "BPF-LSM refuses it (EPERM); the eBPF signal enforcer kills the new image at exec"),
    PresetInfo("protectEnv", "File", BW_PRESET_PROTECT_ENV, BW_VIS_PRESET_ENV,
               "an open of another process's /proc/<pid>/environ",
               "BPF-LSM refuses it (EPERM)"),
    PresetInfo("anonMapExec", "File", BW_PRESET_ANON_MAP_EXEC, BW_VIS_PRESET_ANON_EXEC,
               "an executable anonymous mapping: mmap with PROT_EXEC, or mprotect adding PROT_EXEC",
               "BPF-LSM refuses it (EPERM); the eBPF signal enforcer kills the process at mmap and, on "
               "kernels with maple-tree memory maps (6.1+), at mprotect"),
    PresetInfo("exec", "Process", BW_PRESET_EXEC, BW_VIS_PRESET_ENTERED,
               "an exec by a process that entered the workload's PID namespace from outside, not descended "
               "from its init: kubectl exec, docker exec, nsenter",
               ""),
)}
BY_KERNEL_ID: dict[int, PresetInfo] = {p.kernel_id: p for p in PRESETS.values()}
ROUTES = frozenset(ROUTE_PREFIX + name for name in PRESETS)


class _RuleLike(Protocol):
    operation: str
    preset: str


def route_of(name: str) -> str:
    """``filelessExec`` -> ``Preset:filelessExec``: what an enforcer claims to block that preset."""
    return ROUTE_PREFIX + name


def route(rule: _RuleLike) -> str:
    """The claim a rule needs from an enforcer: its operation, or its preset's route."""
    return route_of(rule.preset) if rule.operation == PRESET_OPERATION else rule.operation


def alert_operation(name: str) -> str:
    """The KubeArmor Operation an alert of preset ``name`` carries (``Process`` when unknown)."""
    info = PRESETS.get(name)
    return info.operation if info is not None else "Process"
