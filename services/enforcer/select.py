"""Choosing the enforcer: the first one in ``enforcer_order`` whose probe says this kernel supports it."""
from __future__ import annotations

import logging
from collections.abc import Callable

from services.enforcer.audit import AuditOnlyEnforcer
from services.enforcer.base import Enforcer
from services.enforcer.bpflsm import BpfLsmEnforcer
from services.enforcer.fanotify import FanotifyEnforcer

__all__ = ["REGISTRY", "choose", "probe_all", "parse_order"]

log = logging.getLogger("bulwark.enforcer.select")

# Key (as written in enforcer_order) -> factory. Factories must not touch the kernel.
REGISTRY: dict[str, Callable[[], Enforcer]] = {
    "bpflsm": BpfLsmEnforcer,
    "fanotify": FanotifyEnforcer,
    "audit": AuditOnlyEnforcer,
}


def parse_order(order: str) -> list[str]:
    """``"bpflsm, fanotify,audit"`` -> ``["bpflsm", "fanotify", "audit"]`` (lower-cased, no blanks)."""
    return [k.strip().lower() for k in order.split(",") if k.strip()]


def choose(order: str, registry: dict[str, Callable[[], Enforcer]] | None = None) -> Enforcer:
    """The first supported enforcer in ``order``; AuditOnly when none is (or the order is empty)."""
    reg = REGISTRY if registry is None else registry
    for key in parse_order(order):
        factory = reg.get(key)
        if factory is None:
            log.warning("unknown enforcer skipped", extra={"enforcer": key, "known": ",".join(reg)})
            continue
        enforcer = factory()
        try:
            supported, reason = enforcer.probe()
        except Exception as exc:  # a broken probe means "unsupported", never a crash
            supported, reason = False, f"probe raised {exc!r}"
        if supported:
            log.info("enforcer chosen", extra={"enforcer": enforcer.name, "reason": reason})
            return enforcer
        log.warning("enforcer unsupported, skipped", extra={"enforcer": key, "reason": reason})
        enforcer.close()
    log.warning("no enforcer in the order is supported: audit only", extra={"order": order})
    return AuditOnlyEnforcer()


def probe_all(registry: dict[str, Callable[[], Enforcer]] | None = None) -> list[tuple[str, bool, str]]:
    """(name, supported, reason) for every known enforcer, for ``bulwark probe``."""
    out: list[tuple[str, bool, str]] = []
    for key, factory in (REGISTRY if registry is None else registry).items():
        enforcer = factory()
        try:
            supported, reason = enforcer.probe()
        except Exception as exc:
            supported, reason = False, f"probe raised {exc!r}"
        finally:
            enforcer.close()
        out.append((enforcer.name, supported, reason))
    return out
