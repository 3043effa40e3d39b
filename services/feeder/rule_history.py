"""Which of a node's rule sets was in force at a given time.

The policy service compiles a new RuleSet for a node; the node's enforcer puts it into the kernel a
little later and reports, in its heartbeat, when each version came into force (``in_force``:
``[[version, since_ns], ...]``). A monitor record can reach the feeder long after its access happened
(a backlog, a busy node): judged by the rules of *now*, an exec that passed before a Block rule was in
force would be reported as that rule's breach (``Block``, Result ``Passed``). :meth:`RuleHistory.at`
gives the set the node enforced when the access happened instead. A version whose in-force time is not
known (no enforcer on the node, or its heartbeat has not come yet) counts as in force since it was
published, which is what the feeder did before it kept a history.
"""
from __future__ import annotations

from collections.abc import Iterable

from shared.schemas.rules import RuleSet

__all__ = ["RuleHistory", "KEPT_VERSIONS"]

KEPT_VERSIONS = 8  # rule sets kept per node; an access older than all of them is judged by the oldest


class RuleHistory:
    """One node's recent rule sets, newest last, and when the enforcer put each in force."""

    def __init__(self) -> None:
        self.sets: list[RuleSet] = []
        self.in_force: dict[int, int] = {}  # version -> wall ns (the earliest an enforcer reported)

    @property
    def newest(self) -> RuleSet | None:
        """The newest set held."""
        return self.sets[-1] if self.sets else None

    def add(self, ruleset: RuleSet) -> bool:
        """Keep ``ruleset`` unless a newer version is held already; True when it became the newest."""
        newest = self.newest
        if newest is not None and ruleset.version < newest.version:
            return False
        if newest is not None and ruleset.version == newest.version:
            self.sets[-1] = ruleset
        else:
            self.sets.append(ruleset)
            del self.sets[:-KEPT_VERSIONS]
        kept = {rs.version for rs in self.sets}
        self.in_force = {v: t for v, t in self.in_force.items() if v in kept or v > ruleset.version}
        return True

    def note_in_force(self, pairs: Iterable[object]) -> None:
        """Fold an enforcer's ``in_force`` report in; malformed entries are skipped. The earliest time
        wins: a restarted enforcer re-applies a version its holder kept in force all along."""
        oldest = self.sets[0].version if self.sets else 0
        for pair in pairs:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                continue
            version, since = pair
            if not isinstance(version, int) or not isinstance(since, int) or since <= 0 or version < oldest:
                continue
            known = self.in_force.get(version)
            self.in_force[version] = since if known is None else min(known, since)

    def at(self, at_ns: int, workload_id: str = "") -> RuleSet | None:
        """The newest set in force at ``at_ns`` (0: the newest set) that lists ``workload_id`` when
        given; a workload that no set in force then lists is judged by the first set that lists it."""
        if not at_ns:
            return self.newest
        in_force_then = [rs for rs in self.sets if self.in_force.get(rs.version, 0) <= at_ns]
        candidates = in_force_then or self.sets[:1]
        for rs in reversed(candidates):
            if not workload_id or workload_id in rs.workloads:
                return rs
        for rs in self.sets:
            if workload_id in rs.workloads:
                return rs
        return self.newest
