"""The null enforcer: nothing is blocked; Block rules are only reported (by the monitor/feeder)."""
from __future__ import annotations

from services.enforcer.base import ProbeResult
from shared.schemas.rules import RuleSet

__all__ = ["AuditOnlyEnforcer"]


class AuditOnlyEnforcer:
    """Always supported, never blocks: the last resort when no real enforcer works."""

    name = "AuditOnly"

    def __init__(self) -> None:
        self.version = 0

    def probe(self) -> ProbeResult:
        """Always supported."""
        return True, "audit only: nothing is blocked"

    def apply(self, ruleset: RuleSet) -> None:
        """Remember the version; enforce nothing."""
        self.version = ruleset.version

    def close(self) -> None:
        """Nothing to release."""

    def stats(self) -> dict[str, int]:
        """No decisions are ever made here."""
        return {"allowed": 0, "denied": 0, "errors": 0, "marks": 0}
