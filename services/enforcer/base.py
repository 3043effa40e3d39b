"""The enforcer contract: every way Bulwark can block speaks this small protocol."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from shared.schemas.rules import Rule, RuleSet

__all__ = ["Enforcer", "ProbeResult", "exec_block_rules"]

ProbeResult = tuple[bool, str]


@runtime_checkable
class Enforcer(Protocol):
    """Something that turns a node's RuleSet into inline denials (or, for AuditOnly, into nothing).

    ``name`` is what alerts carry in their ``Enforcer`` field. ``apply`` replaces the previous rules
    (calling it twice with the same RuleSet changes nothing); ``close`` releases every kernel object
    and may be called more than once. Optional: ``operations`` (the KubeArmor operations it can
    enforce; selection lets each enforcer claim those no earlier one claimed; absent = all),
    ``refresh()`` (re-apply periodically), ``take_reports()`` (kills to publish as ``enforce`` events).
    """

    name: str

    def probe(self) -> ProbeResult:
        """Whether this kernel lets this enforcer work, and why (the kernel's refusal when not)."""
        ...

    def apply(self, ruleset: RuleSet) -> None:
        """Enforce ``ruleset`` from now on, instead of whatever was applied before."""
        ...

    def close(self) -> None:
        """Stop enforcing and release everything (marks, fds, threads)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat (allowed, denied, errors, marks...)."""
        ...


def exec_block_rules(rules: list[Rule]) -> list[Rule]:
    """The rules an exec enforcer acts on: Process rules that Block one exact path."""
    return [r for r in rules if r.operation == "Process" and r.action == "Block" and r.path]
