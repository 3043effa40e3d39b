"""Choosing the enforcers: walking ``enforcer_order``, each supported enforcer claims the operations it
can enforce that no earlier one claimed (``operations``; an enforcer without it claims everything).

With the default order on the development VM: BPF-LSM refuses to load, Fanotify claims Process and
File, the eBPF signal enforcer claims Network, Capabilities and the presets it can block
(``Preset:filelessExec``, ``Preset:anonMapExec``: shared.presets), AuditOnly claims nothing (it is the
fallback when nothing else is supported). The signal enforcer joins implicitly (before ``audit``)
unless the order names it or excludes it with ``-signal``. Where BPF-LSM loads it claims Process,
File, Network and Capabilities, and the enforcers after it that could claim nothing new are not
even probed (their probes load programs).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from services.enforcer.apparmor import AppArmorEnforcer
from services.enforcer.audit import AuditOnlyEnforcer
from services.enforcer.base import Enforcer
from services.enforcer.bpflsm import BpfLsmEnforcer
from services.enforcer.composite import CompositeEnforcer
from services.enforcer.fanotify.enforcer import FanotifyEnforcer
from services.enforcer.signal.enforcer import SignalEnforcer
from shared.presets import ROUTES

__all__ = ["REGISTRY", "ALL_OPERATIONS", "choose", "probe_all", "parse_order", "effective_order"]

ALL_OPERATIONS = frozenset({"Process", "File", "Network", "Capabilities", "Syscall"}) | ROUTES
IMPLICIT = "signal"

log = logging.getLogger("bulwark.enforcer.select")

# Key (as written in enforcer_order) -> factory. Factories must not touch the kernel.
REGISTRY: dict[str, Callable[[], Enforcer]] = {
    "bpflsm": BpfLsmEnforcer,
    "apparmor": AppArmorEnforcer,
    "fanotify": FanotifyEnforcer,
    "signal": SignalEnforcer,
    "audit": AuditOnlyEnforcer,
}


def parse_order(order: str) -> list[str]:
    """``"bpflsm, fanotify,audit"`` -> ``["bpflsm", "fanotify", "audit"]`` (lower-cased, no blanks)."""
    return [k.strip().lower() for k in order.split(",") if k.strip()]


def effective_order(order: str, registry: dict[str, Callable[[], Enforcer]]) -> list[str]:
    """The parsed order, with the signal enforcer added before ``audit`` unless named or ``-signal``."""
    keys = parse_order(order)
    if IMPLICIT in registry and IMPLICIT not in keys and f"-{IMPLICIT}" not in keys:
        at = keys.index("audit") if "audit" in keys else len(keys)
        keys.insert(at, IMPLICIT)
    return [k for k in keys if not k.startswith("-")]


def choose(order: str, registry: dict[str, Callable[[], Enforcer]] | None = None) -> Enforcer:
    """The supported enforcers of ``order``, each with the operations it claimed first; AuditOnly when
    none is supported. One enforcer is returned as itself, several as a CompositeEnforcer."""
    reg = REGISTRY if registry is None else registry
    parts: list[tuple[Enforcer, frozenset[str]]] = []
    claimed: frozenset[str] = frozenset()
    for key in effective_order(order, reg):
        if claimed >= ALL_OPERATIONS:
            break
        factory = reg.get(key)
        if factory is None:
            log.warning("unknown enforcer skipped", extra={"enforcer": key, "known": ",".join(reg)})
            continue
        enforcer = factory()
        new = frozenset(getattr(enforcer, "operations", ALL_OPERATIONS)) - claimed
        if parts and not new:  # nothing left for it to claim: not even probed (probes load programs)
            enforcer.close()
            continue
        try:
            supported, reason = enforcer.probe()
        except Exception as exc:  # a broken probe means "unsupported", never a crash
            supported, reason = False, f"probe raised {exc!r}"
        new = frozenset(getattr(enforcer, "operations", ALL_OPERATIONS)) - claimed  # a probe may narrow them
        if supported and (new or not parts) and not isinstance(enforcer, AuditOnlyEnforcer):
            log.info("enforcer chosen", extra={"enforcer": enforcer.name, "reason": reason,
                                               "operations": ",".join(sorted(new))})
            parts.append((enforcer, new))
            claimed |= new
            continue
        if supported and not parts:  # AuditOnly (or a stub claiming nothing) as the only choice
            return enforcer
        if not supported:
            log.warning("enforcer unsupported, skipped", extra={"enforcer": key, "reason": reason})
        enforcer.close()
    if not parts:
        log.warning("no enforcer in the order is supported: audit only", extra={"order": order})
        return AuditOnlyEnforcer()
    if len(parts) == 1:
        return parts[0][0]
    return CompositeEnforcer(parts)


def probe_all(registry: dict[str, Callable[[], Enforcer]] | None = None) -> list[tuple[str, bool, str]]:
    """(name, supported, reason) for every known enforcer, for ``bulwark probe``."""
    out: list[tuple[str, bool, str]] = []
    for factory in (REGISTRY if registry is None else registry).values():
        enforcer = factory()
        try:
            supported, reason = enforcer.probe()
        except Exception as exc:
            supported, reason = False, f"probe raised {exc!r}"
        finally:
            enforcer.close()
        out.append((enforcer.name, supported, reason))
    return out
