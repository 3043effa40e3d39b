"""Several enforcers at once, each enforcing the operations it claimed (e.g. Fanotify + eBPF Signal).

The first part is the primary: its name is what alerts of refused operations carry (the heartbeat's
``details["enforcer"]``); ``by_operation()`` says which enforcer acts on each operation, so the
feeder can name the right one per alert (``details["enforcers"]``). Kills are reported by the
enforcer that killed, in the event itself (kind ``enforce``, ``extra["enforcer"]``).
"""
from __future__ import annotations

import dataclasses
import logging

from services.enforcer.base import Enforcer, ProbeResult
from shared.presets import route
from shared.schemas.rules import RuleSet

__all__ = ["CompositeEnforcer", "restrict"]

log = logging.getLogger("bulwark.enforcer.composite")


def restrict(ruleset: RuleSet, operations: frozenset[str]) -> RuleSet:
    """A copy of ``ruleset`` holding only rules of ``operations`` (postures and workloads kept); a preset
    rule is of its route (``Preset:filelessExec``: shared.presets)."""
    workloads = {k: dataclasses.replace(wr, rules=[r for r in wr.rules if route(r) in operations])
                 for k, wr in ruleset.workloads.items()}
    return dataclasses.replace(ruleset, workloads=workloads)


class CompositeEnforcer:
    """Parts in priority order, each with the operations it enforces."""

    def __init__(self, parts: list[tuple[Enforcer, frozenset[str]]]) -> None:
        if not parts:
            raise ValueError("a composite enforcer needs at least one part")
        self.parts = parts
        self.name = " + ".join(e.name for e, _ in parts)
        self.alert_name = parts[0][0].name
        self.operations = frozenset().union(*(ops for _, ops in parts))

    def by_operation(self) -> dict[str, str]:
        """Operation -> name of the enforcer acting on it."""
        return {op: e.name for e, ops in self.parts for op in sorted(ops)}

    def probe(self) -> ProbeResult:
        """Supported when every part is."""
        reasons = [(e.name, *e.probe()) for e, _ in self.parts]
        return all(ok for _, ok, _ in reasons), "; ".join(f"{n}: {why}" for n, _, why in reasons)

    def apply(self, ruleset: RuleSet) -> None:
        """Apply to every part (its operations only); the first failure is raised after all were tried."""
        error: Exception | None = None
        for enforcer, ops in self.parts:
            try:
                enforcer.apply(restrict(ruleset, ops))
            except Exception as exc:
                log.exception("part failed to apply", extra={"enforcer": enforcer.name})
                error = error or exc
        if error is not None:
            raise error

    def refresh(self) -> None:
        """Forward to parts that re-apply periodically."""
        for enforcer, _ in self.parts:
            refresh = getattr(enforcer, "refresh", None)
            if refresh is not None:
                refresh()

    def keep_held(self) -> None:
        """Forward to parts whose kernel state a holder keeps."""
        for enforcer, _ in self.parts:
            keep = getattr(enforcer, "keep_held", None)
            if keep is not None:
                keep()

    def take_reports(self) -> list:
        """Kill reports of every part that makes them."""
        out: list = []
        for enforcer, _ in self.parts:
            take = getattr(enforcer, "take_reports", None)
            if take is not None:
                out.extend(take())
        return out

    def close(self) -> None:
        """Close every part, even when one fails."""
        for enforcer, _ in self.parts:
            try:
                enforcer.close()
            except Exception:
                log.exception("part failed to close", extra={"enforcer": enforcer.name})

    def detach(self) -> None:
        """Detach the parts that can leave kernel state to a holder, close the others."""
        for enforcer, _ in self.parts:
            try:
                getattr(enforcer, "detach", enforcer.close)()
            except Exception:
                log.exception("part failed to detach", extra={"enforcer": enforcer.name})

    def stats(self) -> dict[str, int]:
        """The primary's counters as they are, the others' prefixed with their key."""
        out: dict[str, int] = {}
        for i, (enforcer, _) in enumerate(self.parts):
            prefix = "" if i == 0 else enforcer.name.lower().replace("ebpf ", "").replace(" ", "_") + "_"
            out.update({prefix + k: v for k, v in enforcer.stats().items()})
        return out

